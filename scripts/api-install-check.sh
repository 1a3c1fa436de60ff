#!/usr/bin/env bash
# Installs a built defkv into a temporary DESTDIR and checks it installs like a
# real library: defkv.h, libdefkv.so (exporting only the C API), libdefkv.a,
# the defkv CLI and defkv.pc; then builds every tools/examples/*.c against the
# installed copy through pkg-config, shared and static, and runs it on
# stories260K. Prints a Catch2-style summary line (scripts/test.sh run_catch).
#   usage: scripts/api-install-check.sh BUILD_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
SHARED=${DEFKV_SHARED:-$(pwd)/../shared}
MODEL="$SHARED/models/stories260K/stories260K.gguf"
pass=0 fail=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }

DEST=$(mktemp -d /tmp/defkv-install.XXXXXX)
trap 'rm -rf "$DEST"' EXIT
if meson install -C "$BUILD_DIR" --destdir "$DEST" --no-rebuild --quiet >"$DEST.log" 2>&1; then
  ok "meson install"
else
  cat "$DEST.log"; bad "meson install"
fi
rm -f "$DEST.log"

pc=$(find "$DEST" -name defkv.pc | head -1)
hdr=$(find "$DEST" -path '*/include/defkv.h' | head -1)
so=$(find "$DEST" -name 'libdefkv.so' | head -1)
ar=$(find "$DEST" -name 'libdefkv.a' | head -1)
cli=$(find "$DEST" -path '*/bin/defkv' | head -1)
for what in pc hdr so ar cli; do
  if [[ -n "${!what}" && -e "${!what}" ]]; then ok "installed $what: ${!what#$DEST}"; else bad "not installed: $what"; fi
done

if [[ -n "$so" ]]; then
  others=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^defkv_' || true)
  if [[ -z "$others" ]]; then ok "libdefkv.so exports only defkv_* symbols"; else bad "libdefkv.so exports: $(echo $others | head -c 300)"; fi
fi

if [[ -n "$pc" ]]; then
  export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$DEST"
  libdir="$(dirname "$(dirname "$pc")")"
  cflags=$(pkg-config --cflags defkv) && libs=$(pkg-config --libs defkv) && slibs=$(pkg-config --static --libs defkv)
  if [[ $? -eq 0 ]]; then ok "pkg-config defkv: $cflags $libs"; else bad "pkg-config defkv"; fi
  for src in tools/examples/*.c; do
    name=$(basename "$src" .c)
    exe="$DEST/$name"
    # shellcheck disable=SC2086
    if cc -std=c99 -Wall -Wextra -Werror -pedantic "$src" -o "$exe" $cflags $libs; then
      if LD_LIBRARY_PATH="$libdir" "$exe" "$MODEL" >"$exe.out" 2>&1; then ok "$name (shared): $(tail -1 "$exe.out")"
      else cat "$exe.out"; bad "$name (shared) exited non-zero"; fi
    else
      bad "$name: does not compile against the installed header with pkg-config"
    fi
    # Static: the archive alone (plus its Libs.private) must link.
    # shellcheck disable=SC2086
    if cc -std=c99 "$src" -o "$exe-static" $cflags ${slibs/-ldefkv /-l:libdefkv.a }; then
      if ldd "$exe-static" | grep -q libdefkv; then bad "$name (static) still links libdefkv.so"
      elif "$exe-static" "$MODEL" >"$exe.out" 2>&1; then ok "$name (static): $(tail -1 "$exe.out")"
      else cat "$exe.out"; bad "$name (static) exited non-zero"; fi
    else
      bad "$name: does not link against libdefkv.a"
    fi
  done
fi

if [[ $fail -eq 0 ]]; then
  echo "All tests passed ($pass assertions in $pass test cases)"
else
  echo "test cases: $((pass + fail)) | $pass passed | $fail failed"
  exit 1
fi
