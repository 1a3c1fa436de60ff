#!/bin/sh
# Builds and runs one libFuzzer target of tests/fuzz (clang, libFuzzer + ASan
# + UBSan, the library instrumented for coverage). Not part of the default
# build. Run from the repository root:
#   tests/fuzz.sh TARGET [seconds [libFuzzer flags...]]     (default 60)
# TARGET: tokenizer | chat | needle | state | model (tests/fuzz/fuzz_TARGET.cpp
# says what each checks). The build directory is $DEFKV_FUZZ_BUILD (default
# build-fuzz/, shared by the targets); corpus and crash files go to
# build-fuzz/TARGET/ (seeded from ../shared on the first run). Reproduce a
# crash: (cd build-fuzz/TARGET && ../tests/fuzz/fuzz_TARGET crash-...).
# The fuzzer runs one job at nice 19: the machine's cores are shared.
set -eu
target=$1
secs=${2:-60}
shift; [ $# -gt 0 ] && shift
root=$(pwd)
build=${DEFKV_FUZZ_BUILD:-build-fuzz}
export DEFKV_SHARED="${DEFKV_SHARED:-$root/../shared}"
export DEFKV_SOURCE_ROOT="$root"
if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ meson setup "$build" -Dfuzz=true -Dtests=false -Donednn=disabled \
    -Doptimization=1 -Ddebug=true -Db_sanitize=address,undefined -Db_lundef=false \
    -Dcpp_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined" >/dev/null
fi
nice -n 19 ninja -C "$build" "tests/fuzz/fuzz_$target" >/dev/null
out="$build/$target"
mkdir -p "$out/corpus"
cd "$out"
seeds=""
[ -n "$(ls corpus)" ] || seeds=corpus
# Bounded input size and memory: parsers must never allocate more than a
# small multiple of their input.
DEFKV_FUZZ_WRITE_SEEDS=$seeds nice -n 19 "../tests/fuzz/fuzz_$target" -max_total_time="$secs" \
  -max_len="${DEFKV_FUZZ_MAX_LEN:-16384}" -malloc_limit_mb=1024 -rss_limit_mb=2048 -timeout=20 \
  -print_final_stats=1 "$@" corpus
