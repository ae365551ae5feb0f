#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of the decoders a peer exposes: wire
# frames, TCP mux records, the config file, control-socket requests and the
# HTTP/3 face. Builds Fuzz/ with -sanitize=fuzzer,address in .build-fuzz
# (MEMREPLICA_FUZZ declares the target; the normal build never sees it),
# then runs each target for a bounded time from its seed corpus
# (Fuzz/corpus/TARGET). Fails on any crash, hang, sanitizer report or broken
# property; the input that did it is kept under .build-fuzz/artifacts.
#
# usage: scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]   (default 30 s, all)
# targets: frame mux config control http3-route http3-stream
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(frame mux config control http3-route http3-stream)
scratch=${MEMREPLICA_FUZZ_SCRATCH_PATH:-.build-fuzz}
build=(swift build -c release --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing)

# The gold linker warns about every sanitizer helper it cannot export; the
# warnings say nothing about our code.
mkdir -p "$scratch"
if ! MEMREPLICA_FUZZ=1 "${build[@]}" --product memreplica-fuzz > "$scratch/fuzz-build.log" 2>&1; then
  grep -v "Cannot export local symbol" "$scratch/fuzz-build.log" | tail -40
  echo "fuzz: the build failed" >&2
  exit 1
fi
bin="$(MEMREPLICA_FUZZ=1 "${build[@]}" --show-bin-path)/memreplica-fuzz"

artifacts="$scratch/artifacts"
# What libFuzzer learns (new inputs, logs) stays in the build folder, so a
# later run goes on from there; the committed seeds are only read.
work="$scratch/corpus"
mkdir -p "$artifacts"
# Swift's runtime keeps caches for the process's life: leak reports would
# be about those, not about us.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:${ASAN_OPTIONS:-}"
# libFuzzer reports a crash and keeps its input; Swift's backtracer would
# also read the process's memory, and hang on a page of a lazy region that
# a userfaultfd holds back.
export SWIFT_BACKTRACE=enable=no
failed=0
total=0
for target in "${targets[@]}"; do
  [[ -d Fuzz/corpus/$target ]] || { echo "fuzz: no target '$target'" >&2; exit 2; }
  mkdir -p "$work/$target"
  # Longer inputs reach no further into these decoders (a length field can
  # claim any size) and run slower; nghttp3 gets a few stream pieces.
  max_len=1024
  [[ $target == http3-stream ]] && max_len=2048
  log="$work/$target.log"
  rc=0
  "$bin" "$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=$max_len \
    -print_final_stats=1 -artifact_prefix="$artifacts/$target-" "$work/$target" "Fuzz/corpus/$target" > "$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  total=$((total + ${runs:-0}))
  if [[ $rc -ne 0 ]]; then
    failed=1
    echo "fuzz: $target FAILED after ${runs:-?} executions (exit $rc); input kept in $artifacts:" >&2
    grep -v "^#\|^INFO:\|^MERGE" "$log" | tail -40 >&2
  else
    echo "fuzz: $target: ${runs:-?} executions in ${seconds} s, no crash"
  fi
done
echo "fuzz: $total executions in all"
exit $failed
