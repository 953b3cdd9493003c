#!/usr/bin/env bash
# The GPU measurements of one session, batched so that each device call does a lot.
#
# On the development machine (registry access), once: fetch the wheels the GPU
# machine lacks (dask for the Dask tests, statsmodels for robust --scale) into
# the git-ignored .gpudeps/wheels (about 28 MB; carry it with the device call;
# threadpoolctl too, so that the CPU thread policy is the one users get):
#
#     bash bench/gpu_batch.sh --prepare
#
# On the GPU machine, in the repository root (no network, no .git there):
#
#     bash bench/gpu_batch.sh COMMIT [PART ...]
#
# PART is one of: tests operators linalg kron robust robust-scale fair stream
# distributed phases (default: tests linalg kron robust; robust-scale, n = 10^7 against
# statsmodels, wants a device call of its own).  Tables and logs go to $OUT
# (default bench/results).  Each part runs under its own time limit so that one
# slow part cannot eat a whole device call.
set -u

wheels=.gpudeps/wheels
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$wheels"
    exec python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --no-deps -d "$wheels" statsmodels pandas patsy python-dateutil pytz tzdata six \
        dask toolz cloudpickle partd fsspec pyyaml click locket packaging threadpoolctl
fi
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_batch.sh --prepare | COMMIT [PART ...]" >&2
    exit 2
fi
commit=$1
shift
parts=${*:-tests linalg kron robust}
out=${OUT:-bench/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d "$wheels" ]; then
    python3 -m pip install -q --no-index --find-links "$wheels" --no-deps "$wheels"/*.whl \
        >"$out/pip.log" 2>&1 || echo "pip install from $wheels failed (see pip.log)"
fi

run() {  # run NAME SECONDS COMMAND...: log to $out/NAME.log, report the status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - t0)) s"
    tail -3 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >"$out/device.txt" 2>&1
for part in $parts; do
    case $part in
        tests) run tests 480 python3 -m pytest -q -p no:cacheprovider --durations=15 tests ;;
        operators) run operators 540 python3 bench/operators.py --device gpu --commit "$commit" --out "$out" ;;
        linalg) run linalg 300 python3 bench/linalg.py --device gpu --commit "$commit" --out "$out" ;;
        kron) run kron 300 python3 bench/kron.py --device gpu --scale --commit "$commit" --out "$out" ;;
        robust) run robust 300 python3 bench/robust.py --device gpu --quick --commit "$commit" --out "$out" ;;
        robust-scale) run robust-scale 580 python3 bench/robust.py --device gpu --no-figure5 --scale \
            --commit "$commit" --out "$out" ;;
        fair) run fair 300 python3 bench/fair.py --device gpu --commit "$commit" --out "$out" ;;
        stream) run stream 300 python3 bench/stream.py --device gpu --commit "$commit" --out "$out" ;;
        distributed) run distributed 300 python3 bench/distributed.py --device gpu --commit "$commit" --out "$out" ;;
        phases) run phases 300 python3 bench/phases.py --device gpu --commit "$commit" --out "$out" ;;
        *) echo "unknown part: $part" >&2 ;;
    esac
done
