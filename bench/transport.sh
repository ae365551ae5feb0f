#!/usr/bin/env bash
# Transport benchmark: memreplica's QUIC and TLS/TCP transports vs ngtcp2's examples vs bare TLS/TCP, one run.
# Writes bench/results/transport-<UTC time>.json and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product memreplica
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
.build/release/memreplica bench transport --json "$@" > "bench/results/transport-$stamp.json"
echo "wrote bench/results/transport-$stamp.json"
python3 - "bench/results/transport-$stamp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['totalBytes'] >> 20} MiB over {r['streams']} streams, median of {r['runs']} runs, cc={r['congestionControl']}")
for t in r["throughput"]:
    print(f"  {t['name']:<40} {t['medianMBps']:8.1f} MB/s")
for k, v in sorted(r["ratios"].items()):
    print(f"  ratio {k}: {v:.2f}")
for l in r["latency"] + r.get("handshakes", []):
    print(f"  {l['name']:<40} p50 {l['p50Microseconds']:7.1f} us  p99 {l['p99Microseconds']:7.1f} us")
PY
