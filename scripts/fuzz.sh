#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ in turn, each for a bounded time, one at a time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, every target)
#   FUZZ_MERGE=1 scripts/fuzz.sh 300                      (then fold new coverage into fuzz/corpus)
#
# Needs the nightly toolchain; installs cargo-fuzz when it is missing. New inputs go to
# fuzz/work/TARGET (ignored by git); the committed fuzz/corpus/TARGET and
# fuzz/regressions/TARGET are read as seeds and never written, unless FUZZ_MERGE=1 asks for a
# merge, which adds only inputs that reach new coverage (keep the committed corpus small: it is
# replayed by `cargo test --test fuzz_corpus`). Exits non-zero if a target crashes, naming the
# artifact and the command that reproduces it. Only processes this script starts are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build first, outside the per-target time budget.
for target in "${targets[@]}"; do
  cargo +nightly fuzz build "$target"
done

failed=()
for target in "${targets[@]}"; do
  mkdir -p "work/$target" "corpus/$target" "artifacts/$target"
  seeds=("corpus/$target")
  [ -d "regressions/$target" ] && seeds+=("regressions/$target")
  log="work/$target.log"
  echo "== $target: ${seconds}s"
  status=0
  # libFuzzer stops itself after -max_total_time; the outer timeout only guards against a run
  # that does not (a hung input is reported by -timeout as a crash of its own).
  timeout --kill-after=30 $((seconds + 120)) \
    cargo +nightly fuzz run "$target" "work/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^Done [0-9]+ runs' "$log" || true
  if [ "$status" -ne 0 ]; then
    artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
    grep -E -m 3 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" || true
    echo "!! $target failed (exit $status); artifact: ${artifact:-none}; log: fuzz/$log"
    [ -n "$artifact" ] && echo "   reproduce: (cd fuzz && cargo +nightly fuzz run $target $artifact)"
    failed+=("$target")
    continue
  fi
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    cargo +nightly fuzz run "$target" "corpus/$target" "work/$target" -- -merge=1 >>"$log" 2>&1
    echo "   merged: $(find "corpus/$target" -type f | wc -l) files in fuzz/corpus/$target"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
echo "no crash in: ${targets[*]}"
