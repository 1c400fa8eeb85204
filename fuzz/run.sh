#!/usr/bin/env bash
# Builds every fuzz target once, then runs each in turn for SECS seconds (default 30) on one
# core, and prints a summary line per target: executions, coverage (cov: edges, ft: features),
# corpus size, and whether it crashed. Exits non-zero if any target crashed (the input that did
# is in fuzz/artifacts/<target>/). See docs/FUZZING.md.
#
# Usage: fuzz/run.sh [SECS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); works on stable Rust through RUSTC_BOOTSTRAP=1.
set -uo pipefail
cd "$(dirname "$0")"

secs="${1:-30}"
shift || true
export RUSTC_BOOTSTRAP=1
# No sanitizer: the code under test is safe Rust, so AddressSanitizer mostly costs build and run
# time; the allocation cap (src/lib.rs) stands in for its allocation limit. Debug assertions
# and overflow checks are on, so arithmetic overflow is a crash too.
flags=(--sanitizer none --debug-assertions)

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build "${flags[@]}" || exit 1

mkdir -p logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="logs/$t.log"
  # corpus/<t> collects what the run finds (gitignored); seeds/<t> is read only.
  cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*')
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*')
  corp=$(grep -o 'corp: [0-9]*' <<<"$last" | grep -o '[0-9]*')
  if [ "$rc" -eq 0 ]; then status=ok; else status="CRASH (rc $rc, see fuzz/$log)"; failed+=("$t"); fi
  printf 'fuzz %-16s execs=%-10s cov=%-6s ft=%-6s corpus=%-5s %s\n' \
    "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$status"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  for t in "${failed[@]}"; do
    echo "---- $t" >&2
    grep -E -A30 'panicked|ERROR: libFuzzer|oversized allocation' "logs/$t.log" | head -60 >&2
  done
  exit 1
fi
