#!/bin/sh
# Builds and runs the GGUF parser fuzzer (libFuzzer + ASan + UBSan). Not part
# of the default build. Run from the repository root:
#   tests/fuzz_gguf.sh [seconds]        (default 60)
# Output (binary, corpus, crash files) goes to $DEFKV_FUZZ_DIR
# (default build-fuzz-gguf/). Reproduce a crash: build-fuzz-gguf/fuzz_gguf <crash-file>
set -eu
secs=${1:-60}
out=${DEFKV_FUZZ_DIR:-build-fuzz-gguf}
mkdir -p "$out/corpus"
${CXX_FUZZ:-clang++} -std=c++20 -O1 -g -I. \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  tests/fuzz_gguf.cpp runtime/gguf/gguf_reader.cpp runtime/gguf/gguf_writer.cpp \
  -o "$out/fuzz_gguf"
cd "$out"
# One job (the machine is shared), bounded input size and memory: the reader
# must never allocate more than a small multiple of its input.
DEFKV_FUZZ_WRITE_SEEDS=corpus ./fuzz_gguf -max_total_time="$secs" -max_len=65536 \
  -malloc_limit_mb=512 -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 corpus
