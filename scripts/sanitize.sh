#!/usr/bin/env bash
# The test suite under AddressSanitizer or ThreadSanitizer, built in its
# own folder (.build-asan, .build-tsan) so the normal build stays as it is.
# The peer processes the tests start are the same sanitized build. Fails
# when a test fails or a sanitizer reports anything; the whole output is
# kept in .build-asan/test.log / .build-tsan/test.log.
#
# usage: scripts/sanitize.sh address|thread [swift test arguments, e.g. --filter PostCopyTests]
set -euo pipefail
cd "$(dirname "$0")/.."

case ${1:-} in
  address) scratch=.build-asan ;;
  thread) scratch=.build-tsan ;;
  *) echo "usage: scripts/sanitize.sh address|thread [swift test arguments]" >&2; exit 2 ;;
esac
kind=$1
shift
log="$scratch/test.log"

swift build --build-tests --sanitize="$kind" --scratch-path "$scratch"
mkdir -p "$scratch"
# Leak reports would be about the Swift runtime's caches, kept for the
# process's life. ThreadSanitizer reports every race it sees and the run
# goes on, so one run lists them all.
export ASAN_OPTIONS="detect_leaks=0:${ASAN_OPTIONS:-}"
export TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:${TSAN_OPTIONS:-}"
rc=0
swift test --skip-build --disable-xctest --no-parallel --sanitize="$kind" --scratch-path "$scratch" "$@" 2>&1 | tee "$log" || rc=$?
reports=$(grep -c "ERROR: AddressSanitizer\|WARNING: ThreadSanitizer\|runtime error:" "$log" || true)
if [[ $reports -gt 0 ]]; then
  echo "sanitize: $reports $kind sanitizer report(s); see $log" >&2
  exit 1
fi
exit $rc
