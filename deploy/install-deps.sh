#!/usr/bin/env bash
# Installs the Debian packages kiln needs to build, test and run, when missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config clang-format
      libraft-dev libuv1-dev liblz4-dev libmsgpack-dev libmicrohttpd-dev
      libcriterion-dev libjansson-dev libcurl4-openssl-dev
      curl procps iproute2 nftables tzdata)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
