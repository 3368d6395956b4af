#!/usr/bin/env bash
# Builds fp8kv if needed and runs the test suite with ctest. On a machine without a GPU
# (`nvidia-smi -L` lists none) the tests labelled "gpu" are skipped, and this says so.
#
# Environment: FP8KV_BUILD_DIR (default build), FP8KV_JOBS (default nproc),
# FP8KV_CMAKE_ARGS (extra configure flags for a fresh build directory).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${FP8KV_BUILD_DIR:-build}
jobs=${FP8KV_JOBS:-$(nproc)}
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
if [[ ! -f $build_dir/build.ninja ]]; then
  # shellcheck disable=SC2086  # FP8KV_CMAKE_ARGS is a list of flags
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${FP8KV_CMAKE_ARGS:-}
fi
cmake --build "$build_dir" -j "$jobs"

if command -v nvidia-smi >/dev/null && [[ -n $(nvidia-smi -L 2>/dev/null || true) ]]; then
  ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
else
  echo "fp8kv test: no GPU found (nvidia-smi -L lists none): skipping the GPU-labelled tests" \
       "(ctest -LE gpu); they need a Hopper GPU (sm_90a) and run on one with this same script."
  ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" -LE gpu
fi

# Python package (python/, tests/python): the extension built in the same build directory, then
# pytest (NumPy against independent oracles; the GPU tests skip without a GPU). Needs nanobind,
# numpy and pytest for python3 (pip install nanobind numpy pytest).
if python3 -c "import nanobind, numpy, pytest" 2>/dev/null; then
  cmake -S . -B "$build_dir" -DFP8KV_BUILD_PYTHON=ON -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
  cmake --build "$build_dir" --target _ext -j "$jobs"
  PYTHONPATH="$build_dir/python/package:tests/python" python3 -m pytest -q tests/python
else
  echo "fp8kv test: python3 lacks nanobind/numpy/pytest: skipping the Python package tests (tests/python)"
fi
