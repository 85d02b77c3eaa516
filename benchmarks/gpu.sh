#!/usr/bin/env bash
# The GPU engine's proof, in one run on a machine with an NVIDIA GPU and no network (issue 17):
# set-up from the wheels in .whl/ (`../shared/gpu/prepare-wheels.sh msgspec google-crc32c isal "typing-extensions>=4.14"
# packaging pyyaml`: zarr 3.4 needs the first two, png.py isal, and the script's own list lacks them), the device, the GPU test cases,
# the benchmark, then the rest of the suite; every log goes to LOGDIR. Never stops at a failure;
# each part has a time limit so the whole fits in ~8 minutes (the benchmark at 4096² only: the
# 16384² rows take another ~3 min; run benchmarks/gpu.py --sizes 16384 on its own for them).
#   benchmarks/gpu.sh LOGDIR [PYTEST_ARGS...]   # with PYTEST_ARGS: only those tests, no benchmark
# IMFILT_PYTHON=python3 skips the set-up (a machine where imfilt is already installed).
set -u
logs=${1:?usage: benchmarks/gpu.sh LOGDIR [PYTEST_ARGS...]}
shift
mkdir -p "$logs"
cd "$(dirname "$0")/.."
started=$SECONDS
py=${IMFILT_PYTHON:-}
if [[ -z $py ]]; then
  # the machine's python (cupy, numpy, ... as its image has them), the wheels it lacks in /tmp/site,
  # imfilt from this tree, and an `imfilt` command beside that python (where the tests look for it)
  py=$(python3 -c 'import sys; print(sys.executable)')
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$logs/setup.log" 2>&1 || { echo "wheel install failed:"; tail -5 "$logs/setup.log"; }
  export PYTHONPATH=/tmp/site:$PWD
  printf '#!%s\nimport sys\nfrom imfilt.cli.main import main\nsys.exit(main())\n' "$py" > "$(dirname "$py")/imfilt"
  chmod +x "$(dirname "$py")/imfilt"
fi
echo "== set-up took $((SECONDS - started)) s; python: $py"
{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; } > "$logs/nvidia-smi.txt" 2>&1
head -20 "$logs/nvidia-smi.txt"
"$py" -c "import cupy, numpy, scipy, cv2, imfilt; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), 'driver', cupy.cuda.runtime.driverGetVersion(), 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'cv2', cv2.__version__, 'imfilt', imfilt.__version__)" 2>&1 | tee "$logs/versions.txt"

# -v: one line per test as it ends, so a time limit that cuts pytest off still shows what failed
pytest=("$py" -m pytest -p no:cacheprovider -v -rfE --tb=short)
if [[ $# -gt 0 ]]; then  # a re-run of what failed
  timeout 400 "${pytest[@]}" "$@" > "$logs/pytest-rerun.log" 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$logs/pytest-rerun.log" | tail -40
  exit 0
fi
echo "== GPU test cases"
# the GPU cases took more than 150 s on the H200 (2026-12): the hypothesis property tests compile
# cupy kernels for each new shape; they come last in tests/test_convolve.py
timeout 270 "${pytest[@]}" -m gpu --junitxml="$logs/pytest-gpu.xml" > "$logs/pytest-gpu.log" 2>&1
echo "exit $? after $((SECONDS - started)) s"; grep -E "FAILED|ERROR|passed|failed" "$logs/pytest-gpu.log" | tail -40
echo "== benchmark"
timeout 150 "$py" benchmarks/gpu.py --sizes 4096 --json "$logs/bench.json" > "$logs/bench.log" 2>&1
echo "exit $? after $((SECONDS - started)) s"; tail -45 "$logs/bench.log"
echo "== the rest of the suite"
timeout $((440 - SECONDS + started > 30 ? 440 - SECONDS + started : 30)) "${pytest[@]}" -m "not gpu" \
  --junitxml="$logs/pytest-rest.xml" > "$logs/pytest-rest.log" 2>&1
echo "exit $? after $((SECONDS - started)) s"; grep -E "FAILED|ERROR|passed|failed" "$logs/pytest-rest.log" | tail -25
