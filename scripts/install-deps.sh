#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need. Runs as root, or through sudo.
set -euo pipefail
PKGS=(build-essential cmake pkg-config
      libsentencepiece-dev nlohmann-json3-dev libcpp-httplib-dev libcli11-dev
      libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev libbenchmark-dev curl
      # make fuzz: clang 14, libclang_rt.fuzzer/asan/ubsan (libclang-rt-14-dev), llvm-symbolizer
      # for readable sanitizer stacks (llvm-14), python3 for fuzz/make_seeds.py
      clang-14 libclang-rt-14-dev llvm-14 python3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
