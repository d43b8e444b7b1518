#!/usr/bin/env bash
# tools/setup_cuda.sh [CACHE_DIR]   (default: ${XDG_CACHE_HOME:-~/.cache}/video-stylizer/cuda13)
#
# A CUDA 13.0 toolchain for `--features cuda` taken purely from PyPI wheels (no NVIDIA
# driver, no apt non-free toolkit), so the binary links the sonames PyTorch 2.11 cu130 ships:
# libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcuda.so.1.
# Prints the environment to build with:
#   eval "$(bash tools/setup_cuda.sh)" && cargo build --release --features cuda
# The cache lives outside the clone so that CI reuses it (650 MB of wheels, ~15 s when cold).
#
# CUDA 13.0 on purpose: nvcc 13.0 emits PTX ISA 9.0, which a 580 driver (CUDA 13.0) can JIT;
# nvcc >= 13.1 emits an ISA that driver rejects (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
#
# On the GPU machine (no Rust needed), before running the binary, with the python3 that has
# torch (its nvidia/*/lib folders hold the CUDA libraries; libcuda.so.1 comes with the driver):
#   export LD_LIBRARY_PATH="$(python3 -c 'import nvidia,glob,os;print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d,"*","lib","lib*.so*"))})))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# (recipe from ../shared/gpu/setup-cuda-build.sh; the project does not read ../shared.)
set -euo pipefail

CACHE="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/video-stylizer/cuda13}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
WHEELS="$CACHE/wheels"
PREFIX="$CACHE/prefix"
CU="$PREFIX/nvidia/cu13"
PY="${PYTHON:-python3}"

# name==version (CUDA 13.0 / torch 2.11.0-cu130 pins where torch pins them)
PKGS=(
  nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary, nvlink, cudafe++
  nvidia-cuda-crt==13.0.88      # include/crt/host_config.h etc. (nvcc needs them)
  nvidia-nvvm==13.0.88          # nvvm/bin/cicc, libdevice, libnvvm
  nvidia-cuda-cccl==13.0.85     # include/cccl (cuda/std, cub, thrust)
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda.h, cuda_fp16/bf16/fp8.h, libcudart.so.13
  nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13 (torch 2.11 pin)
  nvidia-curand==10.4.0.35      # libcurand.so.10
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13 (cudarc emits -lnvrtc; dropped by --as-needed)
  nvidia-nvtx==13.0.85          # include/nvtx3: CCCL's cub probes __has_include(<nvtx3/...>); without
                                # it a stray /usr/include/nvtx3 (Debian CUDA 11.8) would be picked up
)

echo "[setup] downloading wheels into $WHEELS" >&2
mkdir -p "$WHEELS"
"$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
      -d "$WHEELS" "${PKGS[@]}" >&2

echo "[setup] unpacking into $PREFIX" >&2
mkdir -p "$PREFIX"
for spec in "${PKGS[@]}"; do
  name="${spec%%==*}"; ver="${spec##*==}"
  whl=$(ls "$WHEELS"/"${name//-/_}"-"$ver"-*.whl | head -n1)
  stamp="$PREFIX/.unpacked-$(basename "$whl")"
  [ -e "$stamp" ] && continue
  if command -v unzip >/dev/null; then
    unzip -q -o "$whl" 'nvidia/*' -d "$PREFIX"      # keeps the +x bits
  else
    "$PY" - "$whl" "$PREFIX" <<'EOF'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for i in z.infolist():
        if not i.filename.startswith("nvidia/"): continue
        p = z.extract(i, sys.argv[2])
        m = (i.external_attr >> 16) & 0o777
        if m: os.chmod(p, m)
EOF
  fi
  touch "$stamp"
done

# Unversioned names for the linker (-lcudart -lcublas -lcublasLt -lcurand -lnvrtc).
cd "$CU/lib"
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  ln -sfn "$so" "${so%%.so*}.so"
done

# libcuda.so link stub (the real one comes with the driver on the GPU machine).
# Exports every cu* driver-API name in the wheel headers; soname libcuda.so.1.
# Each stub returns CUDA_ERROR_STUB_LIBRARY (34) should it ever be loaded.
mkdir -p "$CU/lib/stubs"
if [ ! -e "$CU/lib/stubs/libcuda.so" ]; then
  grep -ho '\bcu[A-Z][A-Za-z0-9_]*\b' "$CU"/include/cuda.h "$CU"/include/cudaTypedefs.h \
      "$CU"/include/cudaGL.h "$CU"/include/cudaEGL.h "$CU"/include/cudaVDPAU.h 2>/dev/null \
    | sort -u | sed 's/.*/int &(void) { return 34; }/' > "$CU/lib/stubs/libcuda_stub.c"
  "${CC:-cc}" -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 \
      -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/libcuda_stub.c"
fi

# sanity
"$CU/bin/nvcc" --version | grep -q 'release 13.0' || { echo "nvcc is not 13.0" >&2; exit 1; }
echo "[setup] OK: $("$CU/bin/nvcc" --version | grep release)" >&2

cat <<EOF
export CUDA13_ROOT="$CU"
export PATH="$CU/bin:\$PATH"           # cudarc runs plain 'nvcc --version' from PATH
export NVCC="$CU/bin/nvcc"              # cudaforge (candle-kernels) uses \$NVCC first
export CUDA_HOME="$CU"                  # cudarc: -L \$CUDA_HOME/lib and \$CUDA_HOME/lib/stubs
unset CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB   # cudarc would add their lib dirs too
export CUDARC_CUDA_VERSION=13000        # pin cudarc's bindings to CUDA 13.0
export CUDA_COMPUTE_CAP=90              # H100 (cudaforge builds sm_90a/compute_90a)
export LIBRARY_PATH="$CU/lib/stubs:$CU/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
# only to run the binary on this build machine (never add lib/stubs here):
export LD_LIBRARY_PATH="$CU/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
