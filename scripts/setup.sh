#!/usr/bin/env bash
# Installs what leasewire needs to build and test on a fresh Debian machine.
# Idempotent; run as root (or with sudo available).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Build: a C compiler and pkg-config for -sys crates. Data plane: wireguard-go,
# wireguard-tools, iproute2 and ping for the network-namespace tests and simnet.
PKGS="build-essential pkg-config ca-certificates iproute2 iputils-ping wireguard-tools wireguard-go"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) >= 1.89 first" >&2
  exit 1
fi

# The js-libp2p interop test (tests/interop_js.rs) runs a js-libp2p kad-dht node: node >= 20 and
# the harness's pinned npm packages (tests/interop/package.json + package-lock.json), installed
# with `npm ci` as the Hyperswarm anchors are (../shared/anchors/setup.sh). Debian's own nodejs
# is 18: install node 20 first (e.g. from NodeSource) where that is what apt offers.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing: nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "warning: node $(node --version) is older than 20: the js interop test cannot run" >&2
else
  interop="$(dirname "$0")/../tests/interop"
  echo "interop harness: node $(node --version), npm $(npm --version)"
  (cd "$interop" && npm ci --no-audit --no-fund --loglevel=error)
fi
