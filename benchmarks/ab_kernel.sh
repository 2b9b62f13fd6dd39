#!/usr/bin/env bash
# A/B timing of CPU kernel builds, call by call, in one process. On the shared 2-core machine the speed
# drifts by up to 2x within a minute, so two `make bench` runs cannot settle a 2-5% change; calling the
# builds alternately, each round once (odd rounds in reverse order), and taking the median of the per-round
# speed ratios can.
#
#   bash benchmarks/ab_kernel.sh KERNEL M K N REV [REV...]
#   bash benchmarks/ab_kernel.sh lut 128 768 3072 HEAD .      # last commit against the working tree
#   ROUNDS=800 THREADS=2 bash benchmarks/ab_kernel.sh bytes 128 3072 768 HEAD~3 HEAD
#
# KERNEL: lut (csrc/cpu/linear_int8_lut.cpp, 1-bit codes), bytes (csrc/cpu/linear_int8.cpp's byte
# kernel, 2-bit codes by default, BITS=1 for 1-bit) or gemv (its GEMV path, M <= 4; 2-bit by default:
# the field-plane GEMV). REV: a git revision, or "." for the working tree.
# Each REV's csrc/ is built into a shared library of its own (hidden symbols, op registration compiled
# out), with the flags of setup.py; benchmarks/ab_kernel.cpp loads them all and times them round by
# round on the same random problem (one scale per row, no bias, int8 activations zero-padded to 32).
# Prints per build: median and best GMAC/s, the median speed ratio against the first REV with its
# quartiles, and whether its output equals the first's bit for bit. Env: ROUNDS (400, after 10 warm-up
# rounds), THREADS (1), CPU (the cores to pin: 1 for one thread, 0-(THREADS-1) for more, up to the
# machine's cores, so that each thread has a core of its own), BITS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ $# -lt 5 ]; then
  sed -n '5,7p' "$0" | sed 's/^# //' >&2
  exit 2
fi
KERNEL=$1 M=$2 K=$3 N=$4
shift 4
case "$KERNEL" in
  lut) FILE=linear_int8_lut.cpp ENTRY='bitops::cpu::lut_gemm_avx2(p)' BITS=${BITS:-1} ;;
  bytes) FILE=linear_int8.cpp ENTRY='bitops::cpu::linear_bytes(p, true)' BITS=${BITS:-2} ;;
  gemv) FILE=linear_int8.cpp ENTRY='bitops::cpu::gemv_int8_avx2(p)' BITS=${BITS:-2} ;;
  *) echo "KERNEL=$KERNEL; expected lut, bytes or gemv" >&2; exit 2 ;;
esac
TORCH="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
FLAGS=(-O3 -std=c++20 -ffp-contract=off -fopenmp -DNDEBUG "-I$TORCH/include" "-I$TORCH/include/torch/csrc/api/include")
LINK=("-L$TORCH/lib" -ltorch_cpu -lc10 "-Wl,-rpath,$TORCH/lib")
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The kernel files register their op with TORCH_LIBRARY_IMPL; in these libraries that becomes an unused
# function, so loading several builds registers nothing twice.
cat > "$WORK/no_registration.h" <<'EOF'
#include <torch/library.h>
#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, key, m) [[maybe_unused]] static void ab_unused_registration(torch::Library& m)
EOF

libs=()
pids=()
i=0
for rev in "$@"; do
  dir="$WORK/v$i"
  mkdir -p "$dir"
  if [ "$rev" = . ]; then
    cp -r "$ROOT/csrc" "$dir/"
  else
    git -C "$ROOT" archive "$rev" csrc | tar -x -C "$dir"
  fi
  # Anonymous-namespace functions (linear_bytes) are reachable from a file that includes the kernel file.
  cat > "$dir/entry.cpp" <<EOF
#include "$WORK/no_registration.h"
#include "csrc/cpu/isa.cpp"
#include "csrc/cpu/$FILE"
extern "C" __attribute__((visibility("default"))) void ab_run(const bitops::cpu::Problem& p) { $ENTRY; }
EOF
  g++ "${FLAGS[@]}" -fPIC -shared -fvisibility=hidden -I"$dir/csrc" "$dir/entry.cpp" -o "$dir/kernel.so" "${LINK[@]}" \
    2> "$dir/build.log" &
  pids+=($!)
  libs+=("$rev=$dir/kernel.so")
  i=$((i + 1))
done
g++ "${FLAGS[@]}" -I"$ROOT/csrc" "$ROOT/benchmarks/ab_kernel.cpp" -o "$WORK/ab" "${LINK[@]}" -ldl
for j in "${!pids[@]}"; do
  if ! wait "${pids[$j]}"; then
    echo "building REV=${libs[$j]%%=*} failed (its csrc/cpu/$FILE may predate the entry point $ENTRY):" >&2
    grep -m 5 error "$WORK/v$j/build.log" >&2 || tail -5 "$WORK/v$j/build.log" >&2
    exit 1
  fi
done
THREADS=${THREADS:-1}
CORES=$(( THREADS < $(nproc) ? THREADS : $(nproc) ))
if [ "$CORES" -gt 1 ]; then CPU=${CPU:-0-$((CORES - 1))}; else CPU=${CPU:-1}; fi
echo "$KERNEL, M=$M K=$K N=$N, $BITS-bit codes, $THREADS thread(s), ${ROUNDS:-400} rounds, core(s) $CPU"
taskset -c "$CPU" "$WORK/ab" "$M" "$K" "$N" "$BITS" "$THREADS" "${ROUNDS:-400}" "${libs[@]}"
