#!/bin/sh
set -e
# usage: docs/eval/bounded/build.sh BUILD_DIR SOURCE.cpp OUTPUT  (absolute or repo-relative paths)
root=$(cd "$(dirname "$0")/../../.." && pwd)
src=$(realpath "$2"); out=$(realpath -m "$3")
cd "$1"
g++ -std=c++20 -O2 -march=native -fopenmp -I"$root" $src -o $out -Wl,--start-group runtime/eval/libdefkv_eval.a runtime/engine/libdefkv_engine.a runtime/model/libdefkv_model.a runtime/gguf/libdefkv_gguf.a quant/libdefkv_quant.a simd/libdefkv_simd.a simd/libdefkv_simd_avx2.a simd/libdefkv_simd_avx512.a simd/libdefkv_simd_membw.a quant/libdefkv_quant_avx2.a quant/libdefkv_quant_avx512.a quant/libdefkv_quant_avx512vnni.a quant/libdefkv_quant_avx512bf16.a runtime/text/libdefkv_text.a runtime/kv/libdefkv_kv.a runtime/evict/libdefkv_evict.a -ldnnl -Wl,--end-group
