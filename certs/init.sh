#!/usr/bin/env bash
# Usage: certs/init.sh DIR NAME [NAME...] — a CA and one cert/key per peer.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 DIR NAME [NAME...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
dir=$1; shift
bin=.build/release/memreplica
[[ -x $bin ]] || swift build -c release --product memreplica >&2
args=()
for name in "$@"; do args+=(--peer "$name"); done
exec "$bin" certs init --dir "$dir" "${args[@]}"
