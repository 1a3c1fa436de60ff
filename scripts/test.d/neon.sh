# Sourced by scripts/test.sh. NEON is real: cross-build the kernel tests for
# aarch64 (Debian g++-aarch64-linux-gnu, oneDNN off) and run them under
# qemu-user against the scalar references; test_evict runs the eviction test
# vectors through the NEON scoring kernels (exact keep masks); test_value_norm
# covers the value-norm paths AVX-512 does not take (2-vector token blocks); test_quant
# and test_quant_blocks the int8 products (q8_0 and the low-bit types) against the
# scalar references, twice: on qemu's "max" CPU (ARMv8.2 dot product: the sdot
# kernels) and on a Cortex-A53 (ARMv8.0: the widening-multiply kernels), with
# DEFKV_EXPECT_MATMUL naming the implementation matmul() must pick on each, so
# the two runs cannot test the same path. Skipped with a note when the cross
# toolchain is absent (scripts/setup.sh installs it).
if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
  XBUILD="${DEFKV_XBUILD_DIR:-build-aarch64}"
  if [[ ! -f "$XBUILD/build.ninja" ]]; then
    meson setup "$XBUILD" --cross-file scripts/cross-aarch64.ini -Donednn=disabled \
      --buildtype=release >"$LOG_DIR/aarch64-setup.log" 2>&1
  fi
  if ninja -C "$XBUILD" tests/test_simd tests/test_quant tests/test_quant_blocks tests/test_evict tests/test_value_norm >"$LOG_DIR/aarch64-build.log" 2>&1; then
    for t in simd evict value_norm; do
      run_catch "aarch64-neon:test_$t" qemu-aarch64 -L /usr/aarch64-linux-gnu "$XBUILD/tests/test_$t"
    done
    for cpu_impl in max:neon_dotprod cortex-a53:neon; do
      cpu=${cpu_impl%%:*} impl=${cpu_impl#*:}
      for t in quant quant_blocks; do
        run_catch "aarch64-$cpu:test_$t" env DEFKV_EXPECT_MATMUL="$impl" \
          qemu-aarch64 -cpu "$cpu" -L /usr/aarch64-linux-gnu "$XBUILD/tests/test_$t"
      done
    done
  else
    tail -30 "$LOG_DIR/aarch64-build.log"
    echo "aarch64 cross build failed"
    total_fail=$((total_fail + 1))
  fi
else
  echo "aarch64-neon: skipped (aarch64-linux-gnu-g++ or qemu-aarch64 not installed)"
fi
