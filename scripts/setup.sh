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
