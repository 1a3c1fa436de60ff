#!/usr/bin/env bash
# Same-sitting speed comparison with llama.cpp: runs `defkv bench` and
# llama.cpp on each model in turn, ROUNDS times alternately, and prints pp/tg
# tok/s of both and the ratio defkv / llama.cpp per round. The machine must be
# otherwise idle: with a third process on 2 cores, 2-thread runs of either stall.
#   scripts/bench-vs-llamacpp.sh [-p 512] [-n 64] [-r 2] [-t 2] [--rounds 2] MODEL...
# llama.cpp is llama-bench when LLAMA_BENCH names its binary (README, Speed: built
# from the llama.cpp source that node-llama-cpp ships), else node-llama-cpp's
# prebuilt CPU build through scripts/llamacpp/bench.mjs; first use installs it
# (npm, ~700 MB) into scripts/llamacpp/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."
PP=512 TG=64 REPS=2 THREADS=2 ROUNDS=2
models=()
while (($#)); do
  case $1 in
    -p) PP=$2; shift 2 ;;
    -n) TG=$2; shift 2 ;;
    -r) REPS=$2; shift 2 ;;
    -t) THREADS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) echo "bench-vs-llamacpp.sh: unknown option $1" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
((${#models[@]})) || { echo "bench-vs-llamacpp.sh: no model given (see --help)" >&2; exit 2; }
for v in "$PP" "$TG" "$REPS" "$THREADS" "$ROUNDS"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "bench-vs-llamacpp.sh: '$v' is not a non-negative integer" >&2; exit 2; }
done
DEFKV=${DEFKV:-build/tools/defkv}
[[ -x $DEFKV ]] || { echo "bench-vs-llamacpp.sh: $DEFKV not built (ninja -C build tools/defkv)" >&2; exit 2; }
LLAMA_BENCH=${LLAMA_BENCH:-}
if [[ -n $LLAMA_BENCH ]]; then
  [[ -x $LLAMA_BENCH ]] || { echo "bench-vs-llamacpp.sh: LLAMA_BENCH=$LLAMA_BENCH is not an executable" >&2; exit 2; }
elif [[ ! -d scripts/llamacpp/node_modules/node-llama-cpp ]]; then
  (cd scripts/llamacpp && npm install --no-audit --no-fund --ignore-scripts >/dev/null)
fi

# tok/s of test NAME from defkv bench --json / bench.mjs's table.
defkv_rate() { grep "\"test\": \"$2\"" <<<"$1" | sed -E 's/.*"tok_s_mean": ([0-9.]+).*/\1/'; }
# tok/s of test NAME (pp512, tg64) from bench.mjs's table or llama-bench's jsonl.
llama_rate() {
  if [[ -n $LLAMA_BENCH ]]; then
    local key=n_prompt n=${2#pp}
    [[ $2 == tg* ]] && key=n_gen n=${2#tg}
    grep -E "\"$key\": $n," <<<"$1" | grep -E '"n_(prompt|gen)": 0,' | sed -E 's/.*"avg_ts": ([0-9.]+).*/\1/'
  else
    awk -F'|' -v t="$2" '$5 ~ " "t" " {gsub(/ /, "", $6); split($6, a, "±"); print a[1]}' <<<"$1"
  fi
}
llama_run() {
  if [[ -n $LLAMA_BENCH ]]; then
    "$LLAMA_BENCH" -m "$1" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o jsonl 2>/dev/null
  else
    node scripts/llamacpp/bench.mjs "$1" --pp "$PP" --tg "$TG" --reps "$REPS" --threads "$THREADS"
  fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "# $(date -u '+%F %T UTC') $(git log --oneline -1 | cut -c1-60); $(uptime | sed 's/.*load/load/')"
echo "# llama.cpp: ${LLAMA_BENCH:-node-llama-cpp (scripts/llamacpp/bench.mjs)}"
echo "# $("$DEFKV" bench --membw 2>&1 | tail -1)"
echo "| model | round | defkv pp$PP | llama.cpp pp$PP | ratio | defkv tg$TG | llama.cpp tg$TG | ratio |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for m in "${models[@]}"; do
  for ((r = 1; r <= ROUNDS; ++r)); do
    d=$("$DEFKV" bench -m "$m" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" --no-breakdown --json 2>/dev/null)
    l=$(llama_run "$m")
    dp=$(defkv_rate "$d" "pp$PP"); dt=$(defkv_rate "$d" "tg$TG")
    lp=$(llama_rate "$l" "pp$PP"); lt=$(llama_rate "$l" "tg$TG")
    echo "| $(basename "$m") | $r | $dp | $lp | $(ratio "$dp" "$lp") | $dt | $lt | $(ratio "$dt" "$lt") |"
  done
done
echo "# $("$DEFKV" bench --membw 2>&1 | tail -1)"
