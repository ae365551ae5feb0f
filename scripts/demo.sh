#!/usr/bin/env bash
# The main job, end to end on one machine: a peer listens on loopback and
# exports a 64 MiB region; a client proves its identity with mutual TLS and
# echoes data over fresh QUIC streams, reporting RTT; a second peer mirrors
# the region while the primary is written to, shows the replica converge and
# compares SHA-256 of both; then the region is migrated to the second peer
# while a process writes to it (pre-copy: the writer is frozen for the last
# flush, its stores land on the new owner, the old owner mirrors it back);
# both peers shut down cleanly on SIGTERM.
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
# The regions' files live on tmpfs: a post-copy destination's copy must
# (userfaultfd watches it for missing pages).
data=$(mktemp -d /dev/shm/memreplica-demo.XXXXXX)
peer_pid=""
ping_pid=""
replica_pid=""
writer_pid=""
cleanup() {
  local rc=$?
  [[ -n $ping_pid ]] && kill "$ping_pid" 2>/dev/null || true
  [[ -n $writer_pid ]] && kill -KILL "$writer_pid" 2>/dev/null || true
  if [[ -n $replica_pid ]] && kill -0 "$replica_pid" 2>/dev/null; then
    kill -TERM "$replica_pid" 2>/dev/null || true
    wait "$replica_pid" 2>/dev/null || true
  fi
  if ((rc != 0)) && [[ -s $state/replica.log ]]; then
    echo "-- replica peer log --" >&2
    cat "$state/replica.log" >&2
  fi
  if [[ -n $peer_pid ]] && kill -0 "$peer_pid" 2>/dev/null; then
    kill -TERM "$peer_pid" 2>/dev/null || true
    wait "$peer_pid" 2>/dev/null || true
  fi
  if ((rc != 0)) && [[ -s $state/peer.log ]]; then
    echo "-- peer log --" >&2
    cat "$state/peer.log" >&2
  fi
  rm -rf "$state" "$data"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mr() { "$memreplica" "$@" --state-dir "$state"; }

step "start a peer on 127.0.0.1:$port exporting a 64 MiB region (state folder $state)"
head -c $((64 << 20)) /dev/urandom >"$data/primary.bin"
"$memreplica" peer --listen "127.0.0.1:$port" --state-dir "$state" --name demo-peer \
  --export "demo=$data/primary.bin" 2>"$state/peer.log" &
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

step "mirror the region on a second peer (127.0.0.1:$((port + 1))) while the primary is written"
replica_sock="$state/replica.sock"
"$memreplica" peer --listen "127.0.0.1:$((port + 1))" --state-dir "$state" --name demo-replica \
  --control "$replica_sock" --mirror "demo@127.0.0.1:$port=$data/replica.bin" 2>"$state/replica.log" &
replica_pid=$!
digest() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
progress() {
  "$memreplica" status --json --control "$replica_sock" 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["regions"]:
    print("%s/%s chunks, version %s" % (r.get("chunksPresent") or 0, r["chunks"], r.get("lastAppliedVersion") or 0))
' 2>/dev/null || echo "starting"
}
converge() {  # $1: what we wait for; fails the demo after 60 s
  local start=$SECONDS
  until [[ -f $data/replica.bin && $(digest "$data/primary.bin") == $(digest "$data/replica.bin") ]]; do
    ((SECONDS - start < 60)) || { echo "demo: the replica did not converge ($1) within 60 s" >&2; exit 1; }
    kill -0 "$replica_pid" 2>/dev/null || { echo "demo: the replica peer exited" >&2; exit 1; }
    printf '  %s: %s\n' "$1" "$(progress)"
    sleep 0.25
  done
  printf '  %s: converged, %s\n' "$1" "$(progress)"
}
converge "initial sync"
# Live writes into the primary's file: 1 MiB at 10 MiB, one page at 40 MiB.
dd if=/dev/urandom of="$data/primary.bin" bs=1M count=1 seek=10 conv=notrunc status=none
dd if=/dev/urandom of="$data/primary.bin" bs=4096 count=1 seek=$((40 << 8)) conv=notrunc status=none
converge "after writes"
"$memreplica" status --control "$replica_sock"
printf '  primary sha256 %s\n  replica sha256 %s\n' "$(digest "$data/primary.bin")" "$(digest "$data/replica.bin")"

step "migrate the region to the second peer while a process writes to it"
# A writer attached to the primary stores a counter at three offsets every millisecond.
offsets=(0 $((8 << 20)) $(((64 << 20) - 8)))
"$memreplica" attach-write demo --control "$state/control.sock" --rounds 0 --offsets "${offsets[@]}" >/dev/null &
writer_pid=$!
disown "$writer_pid"  # killed below; no job-control notice
sleep 0.5
mr migrate demo --to "127.0.0.1:$((port + 1))" --timeout 60
word() { od -An -tx8 -j "$2" -N 8 "$1" | tr -d ' '; }
same_stores() {  # $1: the old owner's file, $2: the new owner's; the writer's last stores on both
  local offset a b
  for offset in "${offsets[@]}"; do
    a=$(word "$1" "$offset") b=$(word "$2" "$offset")
    printf '  offset %-9s old owner %s  new owner %s\n' "$offset" "$a" "$b"
    [[ $a == "$b" ]] || { echo "demo: the writer's last store at $offset is not on the new owner" >&2; exit 1; }
  done
}
mirroring() {  # waits until the peer at control socket $1 mirrors the region, synced
  local start=$SECONDS
  until "$memreplica" status --json --control "$1" 2>/dev/null | grep -q '"synced" *: *true'; do
    ((SECONDS - start < 60)) || { echo "demo: the old owner did not mirror the new one within 60 s" >&2; exit 1; }
    sleep 0.2
  done
}
printf '  the writer (pid %s) is %s: stopped at the freeze, its session ended naming the new owner\n' \
  "$writer_pid" "$(awk '{print $3}' "/proc/$writer_pid/stat")"
same_stores "$data/primary.bin" "$data/replica.bin"
kill -KILL "$writer_pid"
writer_pid=""
echo "  the new owner:"
"$memreplica" status --control "$replica_sock" | sed -n '/^regions/,/^peers/p' | sed '$d'
echo "  the old owner, now mirroring the new one (--then mirror):"
mirroring "$state/control.sock"
mr status | sed -n '/^regions/,/^peers/p' | sed '$d'
printf '  old owner sha256 %s\n  new owner sha256 %s\n' "$(digest "$data/primary.bin")" "$(digest "$data/replica.bin")"
[[ $(digest "$data/primary.bin") == $(digest "$data/replica.bin") ]] || { echo "demo: the copies differ" >&2; exit 1; }

step "migrate it back by post-copy while a process writes to it at its owner"
"$memreplica" attach-write demo --control "$replica_sock" --rounds 0 --offsets "${offsets[@]}" >/dev/null &
writer_pid=$!
disown "$writer_pid"
sleep 0.5
"$memreplica" migrate demo --to "127.0.0.1:$port" --mode postcopy --timeout 60 --control "$replica_sock" --state-dir "$state"
same_stores "$data/replica.bin" "$data/primary.bin"
kill -KILL "$writer_pid"
writer_pid=""
mirroring "$replica_sock"
mr status | sed -n '/^regions/,/^peers/p' | sed '$d'
printf '  new owner sha256 %s\n  old owner sha256 %s\n' "$(digest "$data/primary.bin")" "$(digest "$data/replica.bin")"
[[ $(digest "$data/primary.bin") == $(digest "$data/replica.bin") ]] || { echo "demo: the copies differ" >&2; exit 1; }
kill -TERM "$replica_pid"
rc=0
wait "$replica_pid" || rc=$?
replica_pid=""
((rc == 0)) || { echo "demo: the replica peer exited with status $rc after SIGTERM" >&2; exit 1; }

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
echo "demo: OK (mutual TLS, 50 verified echoes, a 64 MiB region mirrored and identical by SHA-256 after live writes, migrated to the mirror by pre-copy and back by post-copy with a live writer, status over the control socket, clean shutdowns)"
