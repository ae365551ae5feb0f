#!/usr/bin/env bash
# Installs the Debian packages memreplica builds and runs against, if any
# are missing. Safe to run again: with everything present it changes nothing.
set -euo pipefail

packages=(
  libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev libnghttp3-dev libssl-dev pkg-config
  libzstd-dev liblz4-dev        # chunk compression on the wire (PAGES frames)
  sqlite3                       # bench --content sqlite: a real database image
  ngtcp2-client ngtcp2-server   # the stock tools the transport benchmark compares against;
                                # gtlsclient also fetches from the HTTP/3 face in tests
  python3 python3-matplotlib    # benchmark tables and plots (bench/plot_wan.py runs on /usr/bin/python3)
  python3-prometheus-client     # the metrics test's exposition-format parser
  iproute2                      # the WAN emulator's namespaces and addresses (ip netns, ip addr)
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} system packages are installed"
else
  echo "install-deps: installing ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# The metrics test parses /metrics with the Prometheus Python client's own
# exposition-format parser. The Debian package covers Debian's python3; a
# python3 of its own (pyenv, a venv) earlier on PATH gets it from PyPI.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  echo "install-deps: installing the Python package prometheus-client for $(command -v python3)"
  python3 -m pip install --quiet prometheus-client
fi

# The HTTP/3 tests fetch from a peer with aioquic (scripts/h3get.py), an
# HTTP/3 client written independently of ngtcp2/nghttp3. Debian has no
# package for it: PyPI, only when missing.
if ! python3 -c 'import aioquic' 2>/dev/null; then
  echo "install-deps: installing the Python package aioquic for $(command -v python3)"
  python3 -m pip install --quiet aioquic
fi

command -v swift >/dev/null || {
  echo "install-deps: no 'swift' on PATH; install a Swift 6 toolchain from https://www.swift.org/install/" >&2
  exit 1
}
