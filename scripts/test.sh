#!/usr/bin/env bash
# Builds and runs the test suite; arguments go to `swift test` (e.g.
# --filter ControlSocketTests). MEMREPLICA_SCRATCH_PATH picks another build
# folder (e.g. to leave a working copy's .build alone).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scratch=()
[[ -n ${MEMREPLICA_SCRATCH_PATH:-} ]] && scratch=(--scratch-path "$MEMREPLICA_SCRATCH_PATH")
swift build --build-tests "${scratch[@]}"
# The suites are swift-testing only; without --disable-xctest the XCTest
# runner would also print "Executed 0 tests", which reads like an empty run.
# Suites run one after another: several move a GiB or bound a timeout, and
# on a 2-core machine running them side by side only measures contention.
swift test --skip-build --disable-xctest --no-parallel "${scratch[@]}" "$@"
