#!/usr/bin/env bash
# The small-files measurement of the Delta table: N live micro-batches of one feed message each
# into the default pipeline's Delta table, with background compaction (the default) and without
# (`sink.compaction.enabled = false`), side by side. For each: the wall time, the files a reader
# of the latest version opens (the Delta log's live files) and all data files in the folder, the
# table's commits, and the median of 5 runs of a `coinstream query` over the whole table.
#
#   bench/delta_files.sh [BATCHES [BIN]]     (defaults: 100000, the release build)
#
# Environment: GAP_SECS [30], the trade time between two trades, so that the partitions (symbol,
# trade_date) of earlier days stop receiving data during the run, as a finished day does live;
# EVERY [1000], sink.compaction.every_batches; RUNS ["compaction no-compaction"], which of the two
# runs to make (one alone gets a core to itself). The two runs go side by side (one core each). Needs the venv of scripts/test.sh
# (COINSTREAM_PYTHON or ~/.cache/coinstream/venv) for the file counts. Prints a Markdown table.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BATCHES="${1:-100000}"
BIN="${2:-$(release_build)}"
GAP_SECS="${GAP_SECS:-30}"
EVERY="${EVERY:-1000}"
RUNS="${RUNS:-compaction no-compaction}"
PYTHON="${COINSTREAM_PYTHON:-$HOME/.cache/coinstream/venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

# One message a batch: the capture holds exactly BATCHES lines (subscriptions, trades,
# heartbeats); the generator writes about 1.1 lines a trade.
"$BIN" generate --count "$((BATCHES * 10 / 11))" --rate "$(echo "1 / $GAP_SECS" | bc -l)" --start 2026-11-20T00:00:00Z \
  --out "$WORK/feed.jsonl" >/dev/null 2>&1
head -n "$BATCHES" "$WORK/feed.jsonl" >"$WORK/capture.jsonl"

QUERY="SELECT symbol, count(*) AS trades, sum(profit) AS profit FROM profit GROUP BY symbol"

measure() {
  local name=$1 dir="$WORK/$1" start end
  shift
  local args=(--config coinstream.toml --set "source.path=$WORK/capture.jsonl"
    --set "engine.checkpoint_dir=$dir/checkpoint" --set "sink.path=$dir/profit"
    --set "dead_letter.path=$dir/dead_letters" "$@")
  start=$(date +%s.%N)
  "$BIN" run "${args[@]}" --trigger available-now --max-records-per-batch 1 --progress json \
    >"$dir.progress" 2>"$dir.log"
  end=$(date +%s.%N)
  local live all commits times=()
  live=$("$PYTHON" -c 'import sys, deltalake; print(len(deltalake.DeltaTable(sys.argv[1]).file_uris()))' "$dir/profit")
  all=$(find "$dir/profit" -name '*.parquet' -not -path '*/_delta_log/*' | wc -l)
  commits=$(find "$dir/profit/_delta_log" -name '*.json' | wc -l)
  for _ in 1 2 3 4 5; do
    local t0 t1
    t0=$(date +%s%N)
    "$BIN" query "${args[@]}" "$QUERY" >/dev/null 2>&1
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000000)))
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
  printf '| %s | %s | %.0f s | %s | %s | %s | %s ms (%s) |\n' "$name" "$BATCHES" \
    "$(echo "$end - $start" | bc)" "$live" "$all" "$commits" "$median" "${times[*]}"
}

# Per-batch time through the run: the mean `durationMs` (sink, total) of the 100 batches that
# end at each tenth of the run, from the progress records (a batch whose message is not a trade
# of the portfolio writes nothing and is left out). Flat means a commit costs the same late as
# early.
per_batch() {
  "$PYTHON" - "$WORK/$1.progress" "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rows = [r for r in rows if r.get("sink", {}).get("numOutputRows", 0) > 0]
n = len(rows)
cells = []
for k in range(1, 11):
    w = rows[max(0, k * n // 10 - 100):k * n // 10]
    if w:
        sink = sum(r["durationMs"]["sink"] for r in w) / len(w)
        total = sum(r["durationMs"]["total"] for r in w) / len(w)
        cells.append(f"{w[-1]['batchId']}: {sink:.1f} / {total:.1f}")
print(f"| {sys.argv[2]} | " + " | ".join(cells) + " |")
PY
}

echo "| run | micro-batches | wall | live files | data files in the folder | log files (.json) | query median (5 runs, ms) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for run in $RUNS; do
  mkdir -p "$WORK/$run"
  case $run in
    compaction) measure compaction --set "sink.compaction.every_batches=$EVERY" >"$WORK/compaction.row" & ;;
    no-compaction) measure no-compaction --set sink.compaction.enabled=false >"$WORK/no-compaction.row" & ;;
    *) echo "RUNS: unknown run $run (compaction, no-compaction)" >&2; exit 2 ;;
  esac
done
wait
for run in $RUNS; do cat "$WORK/$run.row"; done
echo
echo "Per-batch ms (sink / total), the mean of the 100 writing batches up to batch id:"
echo
echo "| run | 10% | 20% | 30% | 40% | 50% | 60% | 70% | 80% | 90% | 100% |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for run in $RUNS; do per_batch "$run"; done
