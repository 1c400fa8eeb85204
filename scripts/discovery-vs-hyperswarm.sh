#!/usr/bin/env bash
# Discovery against the Hyperswarm anchor, interleaved on this machine: for each run and each
# size N x M, `node discovery.mjs N M` (../shared/anchors) and then
# `simnet --scenario discovery --providers N --renters M --json`; then medians and ratios.
#
# usage: scripts/discovery-vs-hyperswarm.sh [RUNS=3]
# env:   PAIRS="5,5 20,20"      sizes, as N,M
#        ANCHORS=DIR            a set-up copy of ../shared/anchors (default: copied to a temp
#                               dir and set up with its setup.sh, which runs `npm ci`)
#        SIMNET=PATH            the simnet binary (default: target/release/simnet, built with
#                               `cargo build --release --workspace` if missing)
#        OUT=FILE               where the JSON lines go (default: a temp file, printed)
#        SUMMARIZE=FILE         run nothing: print the summary of an earlier OUT file
#
# A run that did not complete (a client or renter short of some offer at the deadline) counts
# as infinitely slow in the all-exchanged median, shown as "timeout" when it is the median.
#
# Both sides run inside `unshare -n` with only `lo` when the machine allows it (root), as the
# anchor's own run.sh does, and each run is bounded by `timeout`. Everything binds 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

summarize() {
node - "$1" <<'EOF'
// Medians over runs of each side's figures, and leasewire / hyperswarm ratios.
const fs = require('fs')
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l))
const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number').sort((a, b) => a - b)
  if (!s.length) return null
  return (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2
}
// Same meaning on both sides: all exchanged = slowest client, first = median client.
const pick = {
  hyperswarm: (o) => ({ all: o.complete ? o.all_exchanged_ms?.max : Infinity, first: o.first_conn_ms?.median, cpu: o.clients_cpu_ms, rss: o.max_rss_mb, ok: o.complete }),
  leasewire: (o) => ({ all: o.complete ? o.all_exchanged_ms : Infinity, first: o.first_offer_ms, cpu: o.client_cpu_ms, rss: o.rss_mb_total, ok: o.complete })
}
const sizes = [...new Set(rows.map((r) => `${r.n}x${r.m}`))]
const fmt = (x) => (x === null ? '-' : x === Infinity ? 'timeout' : String(Math.round(x)))
const ratio = (a, b) => (a === null || b === null || b === 0 || !isFinite(a) || !isFinite(b) ? '-' : (a / b).toFixed(2))
console.log('size    side        runs ok  all_exchanged_ms  first_ms  client_cpu_ms  rss_mb')
const summary = {}
for (const size of sizes) {
  const med = {}
  for (const side of ['hyperswarm', 'leasewire']) {
    const got = rows.filter((r) => `${r.n}x${r.m}` === size && r.side === side).map((r) => pick[side](r.out))
    med[side] = { all: median(got.map((g) => g.all)), first: median(got.map((g) => g.first)), cpu: median(got.map((g) => g.cpu)), rss: median(got.map((g) => g.rss)) }
    const ok = got.filter((g) => g.ok).length
    console.log(`${size.padEnd(7)} ${side.padEnd(11)} ${String(got.length).padStart(4)} ${String(ok).padStart(2)}  ${fmt(med[side].all).padStart(16)}  ${fmt(med[side].first).padStart(8)}  ${fmt(med[side].cpu).padStart(13)}  ${fmt(med[side].rss).padStart(6)}`)
  }
  const h = med.hyperswarm; const l = med.leasewire
  console.log(`${size.padEnd(7)} leasewire/hyperswarm:  all exchanged ${ratio(l.all, h.all)}, first ${ratio(l.first, h.first)}, CPU ${ratio(l.cpu, h.cpu)} (times slower or more)`)
  summary[size] = { hyperswarm: h, leasewire: l, ratio_all_exchanged: isFinite(l.all) && isFinite(h.all) && h.all ? l.all / h.all : null, complete_runs: { hyperswarm: rows.filter((r) => `${r.n}x${r.m}` === size && r.side === 'hyperswarm' && r.out.complete).length, leasewire: rows.filter((r) => `${r.n}x${r.m}` === size && r.side === 'leasewire' && r.out.complete).length } }
}
console.log(JSON.stringify({ bench: 'discovery-vs-hyperswarm', summary }))
EOF
}
RUNS=${1:-3}
PAIRS=${PAIRS:-"5,5 20,20"}
[ -z "${SUMMARIZE:-}" ] || { summarize "$SUMMARIZE"; exit 0; }
SIMNET=${SIMNET:-target/release/simnet}
SHARED_ANCHORS=${SHARED_ANCHORS:-../shared/anchors}

if [ ! -x "$SIMNET" ]; then
  cargo build --release --workspace --locked
fi
SIMNET=$(realpath "$SIMNET")

if [ -z "${ANCHORS:-}" ]; then
  # ../shared is read-only: the anchor is set up in a copy.
  scratch=$(mktemp -d)
  cp -r "$SHARED_ANCHORS" "$scratch/anchors"
  ANCHORS=$scratch/anchors
  (cd "$ANCHORS" && ./setup.sh >&2)
fi
OUT=$(realpath -m "${OUT:-$(mktemp --suffix=.jsonl)}")

WRAP=(unshare -n sh -c 'ip link set lo up && exec "$@"' sh)
if ! "${WRAP[@]}" true 2>/dev/null; then
  echo "warning: no network namespace available; running on the host's loopback" >&2
  WRAP=()
fi

# side RUN N M CMD...: one JSON line tagged with side, run and size, or an error line.
side() {
  local name=$1 run=$2 n=$3 m=$4 rc=0 line
  shift 4
  line=$(timeout 300 "${WRAP[@]}" "$@" 2>>"$OUT.log" | tr -d '\n') || rc=$?
  if [ -z "$line" ]; then line='{}'; fi
  echo "{\"side\":\"$name\",\"run\":$run,\"n\":$n,\"m\":$m,\"rc\":$rc,\"out\":$line}" | tee -a "$OUT" >&2
}

echo "load: $(uptime)" >&2
for run in $(seq 1 "$RUNS"); do
  for p in $PAIRS; do
    n=${p%,*} m=${p#*,}
    (cd "$ANCHORS" && side hyperswarm "$run" "$n" "$m" node discovery.mjs "$n" "$m")
    side leasewire "$run" "$n" "$m" "$SIMNET" --scenario discovery --providers "$n" \
      --renters "$m" --json
  done
done
echo "load: $(uptime)" >&2
echo "results: $OUT (stderr of the runs: $OUT.log)" >&2

summarize "$OUT"
