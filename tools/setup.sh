#!/usr/bin/env bash
# Installs the Debian 12 packages flashgmm builds and tests with. Idempotent:
# it runs apt-get (update once, then install) only when something is missing.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap bazel-bootstrap-source bazel-platforms  # Bazel 4.2.3, offline repos
  build-essential                                           # gcc, g++
  libgtest-dev                                              # googletest
  libopenblas-dev libopenblas0-pthread                      # CPU tile products
  liburing-dev libzstd-dev zstd libxxhash-dev               # io
  libjansson-dev                                            # io: JSON files
  openmpi-bin                                               # dist: mpirun and libmpi (loaded at run time)
  python3-numpy python3-sklearn                             # peer test and benchmarks
  python3-faiss                                             # the IVF client test
  python3-dev python3-venv python3-pip python3-pytest       # the Python package and its tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The CUDA toolkit is not a Debian package of a recent enough version; the
# kernels need nvcc >= 12 at /usr/local/cuda (as on the project's machines).
if [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: error: /usr/local/cuda/bin/nvcc not found; install the CUDA Toolkit (>= 12.0)" \
       "from NVIDIA, which puts it there" >&2
  exit 1
fi
