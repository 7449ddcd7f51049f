#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/fuzz_targets and runs each for a bounded time, starting
# from the seed corpus kept in fuzz/corpus/<target>/. Works on a stable toolchain: libfuzzer-sys
# compiles libFuzzer itself with the C++ compiler, and the coverage instrumentation libFuzzer
# needs comes from LLVM's sancov pass, which stable rustc runs through -Cpasses and -Cllvm-args
# (the same flags cargo-fuzz passes, less the sanitizers, which need nightly's -Zsanitizer).
#
#   bash fuzz/run.sh                     # every target, 20 s each
#   FUZZ_SECONDS=60 bash fuzz/run.sh     # longer
#   bash fuzz/run.sh recipe envelope     # some targets
#
# Prints the executions of every target. A crash, a panic, a timeout (FUZZ_TIMEOUT seconds for
# one input, default 10) or running out of memory fails the run; the input that did it is kept
# in fuzz/artifacts/<target>/ (git-ignored) and printed, and `fuzz/target/.../<target> <file>`
# replays it. Inputs found to be interesting are kept in fuzz/target/corpus/<target>/, not in
# the repository's seeds.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
timeout="${FUZZ_TIMEOUT:-10}"
all=(reference digest challenge document recipe envelope layer_tar)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi

# Longest input per target: long enough for the seeds and for what each parser meets in
# practice, short enough that every execution stays fast.
max_len() {
  case "$1" in
    reference | digest) echo 512 ;;
    challenge) echo 2048 ;;
    layer_tar) echo 8192 ;;
    *) echo 16384 ;;
  esac
}

host="$(rustc -vV | sed -n 's/^host: //p')"
# Passing --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$PWD/target"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
echo "fuzz: building ${targets[*]}"
cargo build --release --quiet --target "$host" "${bins[@]}"

failed=()
summary=()
for t in "${targets[@]}"; do
  work="target/corpus/$t"
  artifacts="artifacts/$t/"
  mkdir -p "$work" "$artifacts" "corpus/$t"
  log="target/$t.log"
  echo "fuzz: $t for ${seconds}s"
  status=0
  "target/$host/release/$t" "$work" "corpus/$t" \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout="$timeout" \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  runs="$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | tail -n 1)"
  if [ -z "$runs" ]; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  fi
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    summary+=("$(printf '%-10s FAILED after %s executions' "$t" "${runs:-?}")")
    echo "fuzz: $t failed (exit $status); the end of its log:"
    tail -n 40 "$log"
    for f in "$artifacts"*; do
      [ -f "$f" ] || continue
      echo "fuzz: input kept in fuzz/$f ($(wc -c <"$f") bytes), as hex:"
      od -An -tx1 -v "$f" | head -n 32
    done
  else
    summary+=("$(printf '%-10s %12s executions in %ss, corpus %s files' \
      "$t" "$runs" "$seconds" "$(find "$work" "corpus/$t" -type f | wc -l)")")
  fi
done

echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran without a crash"
