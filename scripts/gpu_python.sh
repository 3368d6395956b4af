#!/usr/bin/env bash
# The Python package on the GPU machine, in one call: install the carried peer wheels (FlashInfer),
# build and install fp8kv with its CUDA kernels through `pip install .`, run the pytest suite (GPU
# and CPU tests), the PyTorch decode-loop example, and the FlashInfer comparison.
#
#   run (device tool), carry [".whl", ".devcarry/python", ".deps/cutlass_wheel/cutlass_library/source/include"]:
#     bash scripts/gpu_python.sh [build|test|bench|all] [extra arguments for bench/flashinfer_peers.py]
#
# .whl holds flashinfer-python 0.6.1 and apache-tvm-ffi / nvidia-cudnn-frontend, which the GPU image
# lacks (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl);
# the CUTLASS/CuTe headers (scripts/setup.sh fetches them) are git-ignored, so they travel too;
# .devcarry/python/prefix holds the header-only nlohmann-json and CLI11 CMake packages, which the
# top-level CMakeLists requires and the GPU image does not have. Logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fp8kv-out}
mkdir -p "$OUT"
stage=${1:-all}
export PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
[ -d .devcarry/python/prefix ] && export CMAKE_PREFIX_PATH="$PWD/.devcarry/python/prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# FlashInfer JIT-compiles into this cache; keep it on local disk.
export FLASHINFER_WORKSPACE_BASE=/tmp/flashinfer
status=0

if [ "$stage" = build ] || [ "$stage" = all ]; then
  start=$(date +%s)
  if ! python3 -m pip install -v --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    exit 1
  fi
  echo "pip install . (CUDA): $(( $(date +%s) - start )) s"
  python3 -c "import fp8kv; print('fp8kv', fp8kv.__version__, 'cuda_available', fp8kv.cuda_available())"
fi

if [ "$stage" = test ] || [ "$stage" = all ]; then
  python3 -m pytest -q -rs tests/python 2>&1 | tee "$OUT/pytest.log" | tail -30 || status=1
  python3 examples/torch_decode_loop.py --device cuda 2>&1 | tee "$OUT/example.log" | tail -12 || status=1
fi

if [ "$stage" = bench ] || [ "$stage" = all ]; then
  python3 bench/flashinfer_peers.py --out "$OUT/flashinfer_h100.json" "${@:2}" 2>&1 | tee "$OUT/bench.log" | tail -16 || status=1
fi
exit $status
