#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need, then the `openai` npm package the
# SDK test uses (tests/node, from its package-lock.json). Runs as root, or through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(build-essential cmake pkg-config
      libsentencepiece-dev nlohmann-json3-dev libcpp-httplib-dev libcli11-dev
      libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev libbenchmark-dev curl
      # make test-sanitize: g++'s ASan and UBSan runtimes (gcc 12 pulls them in; named so a
      # trimmed toolchain cannot miss them)
      libasan8 libubsan1
      # make fuzz: clang 14, libclang_rt.fuzzer/asan/ubsan (libclang-rt-14-dev), llvm-symbolizer
      # for readable sanitizer stacks (llvm-14), python3 for fuzz/make_seeds.py
      clang-14 libclang-rt-14-dev llvm-14 python3)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js from Debian unless the machine already has a node and npm (of any origin).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The SDK test's packages, exactly as locked; again only when the lock file changed.
stamp=tests/node/node_modules/.installed-lock
if ! cmp -s tests/node/package-lock.json "$stamp" 2>/dev/null; then
  echo "install-deps: npm ci in tests/node"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/node/package-lock.json "$stamp"
fi
