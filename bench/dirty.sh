#!/usr/bin/env bash
# Dirty-page scan benchmark: userfaultfd tracker vs hash scanner, one run.
# Writes bench/results/dirty-<UTC time>.json and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product memreplica
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
.build/release/memreplica bench dirty --json "$@" > "bench/results/dirty-$stamp.json"
echo "wrote bench/results/dirty-$stamp.json"
python3 - "bench/results/dirty-$stamp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['regionBytes'] >> 20} MiB, {r['pagesWrittenPerRound']} pages ({r['dirtyPercent']} %) written per round, {r['rounds']} rounds, kernel {r['kernel']}")
print(f"  userfaultfd  median {r['uffdScanMedianMilliseconds']:.3f} ms  p99 {r['uffdScanP99Milliseconds']:.3f} ms")
print(f"  hash         median {r['hashScanMedianMilliseconds']:.1f} ms  p99 {r['hashScanP99Milliseconds']:.1f} ms")
print(f"  ratio {r['speedup']:.0f}x, agreeing rounds {r['roundsAgreeing']}/{r['rounds']}")
print(f"  targets: scan <= 1 ms {'met' if r['meetsScanTarget'] else 'MISSED'}, >= 100x {'met' if r['meetsSpeedupTarget'] else 'MISSED'}")
PY
