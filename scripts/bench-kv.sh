#!/usr/bin/env bash
# The KV-cache benchmark of issue #3 on one model (default: the TinyLlama-1.1B
# shape from `defkv synth`), each measurement in its own process so peak RSS is
# per size:
#   1. eviction time as a share of prefill time, 4k prompt, 20 % budget,
#      defensivekv, bounded and oneshot schedules;
#   2. decode tok/s at 4k context with and without a 20 % budget, and at ~800
#      context without one;
#   3. peak RSS as the prompt grows 1k -> 8k with a 20 % budget (and without).
# Prints a markdown table (and keeps the raw JSON lines in $OUT).
#   usage: scripts/bench-kv.sh [MODEL] [THREADS] [OUT.jsonl]
# Run it on an idle machine: a loaded 2-core machine turns these numbers into noise.
set -euo pipefail
cd "$(dirname "$0")/.."
DEFKV=${DEFKV:-build/tools/defkv}
MODEL=${1:-/tmp/synth/tinyllama-q8_0.gguf}
T=${2:-2}
OUT=${3:-/tmp/bench-kv.jsonl}
if [[ ! -f "$MODEL" ]]; then
  echo "bench-kv: $MODEL missing; making it (TinyLlama-1.1B shape, q8_0, random weights)" >&2
  mkdir -p "$(dirname "$MODEL")"
  "$DEFKV" synth "$MODEL" --shape tinyllama-1.1b --type q8_0
fi
: >"$OUT"
bench() {  # label, bench args...
  local label=$1; shift
  echo "bench-kv: $label" >&2
  "$DEFKV" bench -m "$MODEL" -t "$T" -r 1 --json --no-breakdown "$@" 2>/dev/null |
    sed "s/^{/{\"label\": \"$label\", /" >>"$OUT"
}
# Full-cache runs at 4k are slow (the full-cache prefill is attention-bound: ~4 min per
# 4k run on TinyLlama); FULL=1 adds them for the with/without comparison.
bench "pp4096 defensivekv 20% bounded" -p 4096 -n 0 --kv-ratio 0.2 --kv-policy defensivekv --kv-schedule bounded
bench "tg32 @800 full" -p 0 -n 32 -d 800
bench "tg32 @4096 defensivekv 20%" -p 0 -n 32 -d 4096 --kv-ratio 0.2 --kv-policy defensivekv
for n in 1024 2048 8192; do  # peak RSS as the prompt grows (4096: the first row)
  bench "rss pp$n defensivekv 20%" -p "$n" -n 0 --kv-ratio 0.2 --kv-policy defensivekv
done
if [[ "${FULL:-0}" == 1 ]]; then
  bench "pp4096 defensivekv 20% oneshot" -p 4096 -n 0 --kv-ratio 0.2 --kv-policy defensivekv --kv-schedule oneshot
  bench "tg32 @4096 full" -p 0 -n 32 -d 4096
  for n in 1024 2048 4096; do bench "rss pp$n full" -p "$n" -n 0; done
fi
python3 - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| run | tok/s | seconds | eviction share | KV entries at end | peak RSS MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    ev = "%.2f %%" % (100 * r["evict_fraction"]) if r.get("budget") else "-"
    print("| %s | %.1f | %.2f | %s | %d | %.0f |" % (r["label"], r["tok_s_mean"], r["seconds_mean"], ev,
                                                    r["kv_entries_end"], r["peak_rss_mib"]))
EOF
