"""Phase timings behind randomized_svd and lstsq on a GPU (the figures quoted in issue notes).

Usage: ``python bench/profile_gpu_phases.py`` on a CUDA machine with torch.  Prints the best of
five wall-clock times per phase: the test-matrix product, Householder QR (CuPy, torch) against
Cholesky QR of the n x l range basis, the small SVD, the sketch kernels on 2^20 x 512 fp64, and
the two lstsq methods with their phase split.
"""
import time, numpy as np, cupy as cp, torch, gpusketch as gs
from gpusketch.operators import Gaussian
def t(f, r=5):
    f(); cp.cuda.Device().synchronize(); ts=[]
    for _ in range(r):
        t0=time.perf_counter(); f(); cp.cuda.Device().synchronize(); ts.append(time.perf_counter()-t0)
    return min(ts)
n,d,k=200000,2000,50; l=k+10
rng=np.random.default_rng(0)
A=cp.asarray((rng.standard_normal((n,100)).astype(np.float32) @ rng.standard_normal((100,d)).astype(np.float32)))
At=torch.as_tensor(A, device='cuda')
Om=Gaussian(l,d,seed=1)
Omd=Om.todense(cp).T.astype(cp.float32)
print('gs.randomized_svd', t(lambda: gs.randomized_svd(A,k,seed=1)))
print('torch.svd_lowrank', t(lambda: torch.svd_lowrank(At,q=l,niter=2)))
print('A@Om.T operator', t(lambda: A@Om.T))
print('A@Omd GEMM', t(lambda: A@Omd))
Y=A@Omd
print('cupy qr nxl', t(lambda: cp.linalg.qr(Y)))
print('torch qr nxl', t(lambda: torch.linalg.qr(torch.as_tensor(Y,device='cuda'))))
def cholqr(Y):
    G=Y.T@Y; L=cp.linalg.cholesky(G); import cupyx.scipy.linalg as la
    return la.solve_triangular(L, Y.T, lower=True).T
print('cholqr nxl', t(lambda: cholqr(Y)))
Q=cp.linalg.qr(Y)[0]
print('A.T@Q', t(lambda: A.T@Q))
B=(A.T@Q).T
print('svd B', t(lambda: cp.linalg.svd(B, full_matrices=False)))
print('torch svd B', t(lambda: torch.linalg.svd(torch.as_tensor(B,device='cuda'), full_matrices=False)))
A64=cp.asarray(rng.standard_normal((1<<20,512)))
b64=cp.asarray(rng.standard_normal(1<<20))
for kind in ('sparse_sign','countsketch','srht','gaussian'):
    S=gs.make_sketch(kind, 4*512+10, 1<<20, seed=1)
    print('sketch', kind, t(lambda: S@A64, 3))
print('lstsq sketch', t(lambda: gs.lstsq(A64,b64,method='sketch',seed=1),3))
print('lstsq precondition', t(lambda: gs.lstsq(A64,b64,seed=1),3), gs.lstsq(A64,b64,seed=1).info)
