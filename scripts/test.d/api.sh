# Sourced by scripts/test.sh: extra suites of the embeddable library.
# 1. Install check: meson install into a temporary DESTDIR, build
#    tools/examples/*.c against it with pkg-config (shared and static), run.
run_catch api-install bash scripts/api-install-check.sh "$BUILD_DIR"
# 2. The C API tests under AddressSanitizer + UBSan, in their own build
#    directory (only tests/test_api and what it links are built).
ASAN_BUILD="${DEFKV_ASAN_BUILD_DIR:-build-asan}"
if [[ ! -f "$ASAN_BUILD/build.ninja" ]]; then
  meson setup "$ASAN_BUILD" -Doptimization=1 -Ddebug=false -Db_sanitize=address,undefined -Db_lundef=false \
    >"$LOG_DIR/asan-setup.log" 2>&1
fi
if ninja -C "$ASAN_BUILD" tests/test_api >"$LOG_DIR/asan-build.log" 2>&1; then
  ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    run_catch "asan-ubsan:test_api" "$ASAN_BUILD/tests/test_api"
else
  tail -30 "$LOG_DIR/asan-build.log"
  echo "asan-ubsan build of tests/test_api failed"
  total_fail=$((total_fail + 1))
fi
