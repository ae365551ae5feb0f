#!/usr/bin/env bash
# The main job, end to end on one machine: a peer listens on loopback,
# a client proves its identity with mutual TLS, echoes data over fresh
# QUIC streams and reports RTT, the peer reports its view, and the peer
# shuts down cleanly on SIGTERM.
#
#   MEMREPLICA_DEMO_PORT     UDP port for the peer (default 4433)
#   MEMREPLICA_SCRATCH_PATH  build folder (default: SwiftPM's .build)
set -euo pipefail
cd "$(dirname "$0")/.."

port=${MEMREPLICA_DEMO_PORT:-4433}
scratch=()
[[ -n ${MEMREPLICA_SCRATCH_PATH:-} ]] && scratch=(--scratch-path "$MEMREPLICA_SCRATCH_PATH")

step() { printf '\n== %s\n' "$*"; }

step "system packages"
scripts/install-deps.sh

step "build (release)"
swift build -c release "${scratch[@]}"
memreplica="$(swift build -c release "${scratch[@]}" --show-bin-path)/memreplica"
"$memreplica" version

state=$(mktemp -d "${TMPDIR:-/tmp}/memreplica-demo.XXXXXX")
peer_pid=""
ping_pid=""
cleanup() {
  local rc=$?
  [[ -n $ping_pid ]] && kill "$ping_pid" 2>/dev/null || true
  if [[ -n $peer_pid ]] && kill -0 "$peer_pid" 2>/dev/null; then
    kill -TERM "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
  fi
  if ((rc != 0)) && [[ -s $state/peer.log ]]; then
    echo "-- peer log --" >&2
    cat "$state/peer.log" >&2
  fi
  rm -rf "$state"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mr() { "$memreplica" "$@" --state-dir "$state"; }

step "start a peer on 127.0.0.1:$port (state folder $state)"
"$memreplica" peer --listen "127.0.0.1:$port" --state-dir "$state" --name demo-peer 2>"$state/peer.log" &
peer_pid=$!
for _ in $(seq 100); do
  mr status >/dev/null 2>&1 && break
  kill -0 "$peer_pid" 2>/dev/null || { echo "demo: the peer exited during start-up" >&2; exit 1; }
  sleep 0.1
done
mr status >/dev/null || { echo "demo: the peer did not answer 'memreplica status' within 10 s" >&2; exit 1; }
sed -e 's/^/  peer log: /' "$state/peer.log"

step "memreplica ping 127.0.0.1:$port --count 20"
mr ping "127.0.0.1:$port" --count 20

step "memreplica status (while a second client is connected)"
mr ping "127.0.0.1:$port" --count 30 --interval 0.1 --log-level warning >"$state/ping2.log" &
ping_pid=$!
for _ in $(seq 50); do
  mr status --json 2>/dev/null | grep -q '"remoteAddress"' && break
  sleep 0.1
done
mr status
wait "$ping_pid"
ping_pid=""
tail -n 3 "$state/ping2.log"

step "stop the peer with SIGTERM"
kill -TERM "$peer_pid"
rc=0
wait "$peer_pid" || rc=$?
peer_pid=""
sed -e 's/^/  peer log: /' "$state/peer.log" | tail -n 4
if ((rc != 0)); then
  echo "demo: the peer exited with status $rc after SIGTERM (expected 0)" >&2
  exit 1
fi
if [[ -e $state/control.sock ]]; then
  echo "demo: the peer left its control socket behind" >&2
  exit 1
fi
echo
echo "demo: OK (mutual TLS handshake, 50 verified echoes, status over the control socket, clean shutdown)"
