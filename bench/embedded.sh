#!/usr/bin/env bash
# The embedded job on a capture: COUNT generated Coinbase feed frames replayed through the shipped
# `coinstream.toml` (Delta sink, end-of-run report) with `--trigger available-now`, with XRP-USD
# removed from the coin map so that its trades (about 10% of the frames) go to the dead letters.
# Each binary given runs RUNS times, alternating, so that a noisy machine hits them alike; prints
# one Markdown row per run (wall, peak RSS, the summed stage durations of the progress records)
# and the median wall and peak RSS per binary.
#
#   bench/embedded.sh [BIN...]      (default: the release build)
#
# Environment: COUNT [1000000], RUNS [3], MAX [the config's max_records_per_batch].
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COUNT="${COUNT:-1000000}"
RUNS="${RUNS:-3}"
BINS=("$@")
[[ ${#BINS[@]} -gt 0 ]] || BINS=("$(release_build)")
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

"${BINS[0]}" generate --count "$COUNT" --seed 42 --out "$WORK/feed.jsonl" >/dev/null 2>&1
python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); m.pop("XRP-USD"); json.dump(m, open(sys.argv[2], "w"))' \
  required_data/coin_map.json "$WORK/coin_map.json"
extra=()
[[ -n "${MAX:-}" ]] && extra=(--max-records-per-batch "$MAX")

echo "| binary | run | wall s | peak RSS MB | batches | getBatch | decode | query | sink | commit (ms) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for run in $(seq 1 "$RUNS"); do
  for i in "${!BINS[@]}"; do
    bin="${BINS[$i]}" out="$WORK/run"
    rm -rf "$out"
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$bin" run --config coinstream.toml \
      --set "source.path=$WORK/feed.jsonl" --set "source.coin_map=$WORK/coin_map.json" \
      --set "engine.checkpoint_dir=$out/checkpoint" --set "sink.path=$out/profit" \
      --set "dead_letter.path=$out/dead_letters" --trigger available-now --no-ui \
      --progress json "${extra[@]}" >"$WORK/progress" 2>"$WORK/log"
    python3 - "$WORK/progress" "$WORK/time" "$i" "$run" >>"$WORK/rows" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
wall, rss = open(sys.argv[2]).read().split()[-2:]
d = lambda k: sum(r["durationMs"][k] for r in rows)
print(sys.argv[3], sys.argv[4], wall, int(rss) // 1024, len(rows),
      *(d(k) for k in ["getBatch", "decode", "query", "sink", "commit"]))
PY
  done
done
python3 - "$WORK/rows" "${BINS[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
bins = sys.argv[2:]
for r in rows:
    print(f"| {bins[int(r[0])]} | {r[1]} | " + " | ".join(r[2:]) + " |")
print()
for i, b in enumerate(bins):
    mine = [r for r in rows if int(r[0]) == i]
    wall = statistics.median(float(r[2]) for r in mine)
    rss = statistics.median(int(r[3]) for r in mine)
    print(f"{b}: median wall {wall:.2f} s, median peak RSS {rss} MB")
PY
