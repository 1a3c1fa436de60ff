#!/bin/sh
set -e
# usage: docs/soak/build.sh BUILD_DIR OUTPUT   (absolute or repo-relative paths)
# Links the soak driver against the build's shared C library (libdefkv.so).
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=$(realpath "$1/runtime/api")
g++ -std=c++20 -O2 -Wall -I"$root" "$root/docs/soak/soak.cpp" -o "$2" -L"$lib" -ldefkv -Wl,-rpath,"$lib"
