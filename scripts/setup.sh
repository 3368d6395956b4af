#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine: installs what is missing, configures and builds fp8kv,
# then runs the main job (the KV-cache capacity plan for Qwen3-8B in 40 GiB, per-tensor and
# per-token FP8). Safe to re-run: installed packages are skipped, the build is incremental.
#
#   scripts/setup.sh                 install + build + plan
#   scripts/setup.sh --install-only  install the dependencies only (what .ci/run uses)
#
# Environment: FP8KV_BUILD_DIR (default build), FP8KV_JOBS (default nproc),
# FP8KV_CMAKE_ARGS (extra configure flags, e.g. -DFP8KV_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${FP8KV_BUILD_DIR:-build}
jobs=${FP8KV_JOBS:-$(nproc)}
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo=sudo; fi

# CMake finds nvcc on PATH; the CUDA toolkit's default prefix is often not on it.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
with_cuda=0
if command -v nvcc >/dev/null; then with_cuda=1; fi

packages=(cmake ninja-build g++ libgtest-dev nlohmann-json3-dev libcli11-dev libopenblas-dev)
cutlass_dir=.deps/cutlass_wheel
if [[ $with_cuda -eq 1 && ! -d $cutlass_dir/cutlass_library/source/include/cute ]]; then
  packages+=(python3-pip unzip)  # to fetch the CUTLASS/CuTe headers below
fi
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then missing+=("$p"); fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "fp8kv setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "fp8kv setup: apt packages already present"
fi

# The Hopper kernels use CUTLASS/CuTe headers, taken from the nvidia-cutlass wheel on PyPI
# (headers only; nothing is installed into Python).
if [[ $with_cuda -eq 1 && ! -d $cutlass_dir/cutlass_library/source/include/cute ]]; then
  echo "fp8kv setup: fetching CUTLASS/CuTe headers (nvidia-cutlass==4.2.0.0 wheel)"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" nvidia-cutlass==4.2.0.0
  mkdir -p "$cutlass_dir"
  unzip -q -o "$tmp"/nvidia_cutlass-*.whl 'cutlass_library/source/include/*' -d "$cutlass_dir"
  rm -rf "$tmp"
fi

# The Python package's tests (tests/python: NumPy against independent oracles) need nanobind,
# numpy and pytest for python3; scripts/test.sh builds the extension and runs them when present.
if ! python3 -c "import nanobind, numpy, pytest" 2>/dev/null; then
  echo "fp8kv setup: installing nanobind numpy pytest (pip)"
  python3 -m pip install --quiet nanobind numpy pytest
fi

if [[ ${1:-} == --install-only ]]; then exit 0; fi

# shellcheck disable=SC2086  # FP8KV_CMAKE_ARGS is a list of flags
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${FP8KV_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "$jobs"

echo
echo "== fp8kv plan --model qwen3-8b --memory 40GiB --kv-cache-dtype fp8"
"$build_dir/fp8kv" plan --model qwen3-8b --memory 40GiB --kv-cache-dtype fp8
echo
echo "== fp8kv plan --model qwen3-8b --memory 40GiB --kv-cache-dtype fp8 --scales per_token"
"$build_dir/fp8kv" plan --model qwen3-8b --memory 40GiB --kv-cache-dtype fp8 --scales per_token
