#!/usr/bin/env bash
# Optional peer benchmark: llama.cpp's own CPU kernels for its 1-bit (Q1_0) and ternary (TQ2_0)
# weight types, with Q8_0 as its int8 reference, at the BERT-base shapes of bench_gemm.py, so the
# report can put them beside ours. Not part of CI or `make bench`: the build takes ~25 minutes on
# the 2-core machine. Nothing it downloads or builds is committed (it all lives in the cache folder).
#
#   bash benchmarks/llama_cpp_peer.sh            # -> benchmarks/results/llama_cpp.{csv,md}
#
# Steps: fetch the llama-cpp-python source distribution (it vendors llama.cpp) with pip, add our
# shapes to test-backend-ops' perf cases (a copy in the cache), build that one test with cmake, run
#   test-backend-ops perf -b CPU -o MUL_MAT -p <our cases>
# pinned to one core (its CPU backend uses hardware_concurrency/2 = 1 thread here). llama.cpp
# multiplies quantized weights by activations it quantizes itself (Q8_K / Q8_0 blocks), like our W1A8.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${BITBERT_CACHE:-$ROOT/.cache}/llama"
OUT="${OUT_DIR:-$ROOT/benchmarks/results}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$CACHE" "$OUT"

SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
fi
SRC="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  tar -xzf "$SDIST" -C "$CACHE" "llama_cpp_python-$VERSION/vendor/llama.cpp"
fi

# Our shapes as extra perf cases, inserted once before the end of make_test_cases_perf().
# test_mul_mat(type_a, type_b, m = weight rows (out features), n = tokens, k = in features, ...).
TBO="$SRC/tests/test-backend-ops.cpp"
if ! grep -q "bitbert shapes" "$TBO"; then
  "$PY" - "$TBO" <<'EOF'
import re, sys
path = sys.argv[1]
src = open(path).read()
start = src.index("static std::vector<std::unique_ptr<test_case>> make_test_cases_perf() {")
ret = src.index("    return test_cases;", start)
cases = '''    // bitbert shapes (added by benchmarks/llama_cpp_peer.sh)
    for (int64_t tokens : {1, 8, 32, 128}) {
        for (ggml_type type_a : {GGML_TYPE_Q1_0, GGML_TYPE_TQ2_0, GGML_TYPE_Q8_0}) {
            for (auto mk : std::vector<std::pair<int64_t, int64_t>>{{768, 768}, {3072, 768}, {768, 3072}}) {
                test_cases.emplace_back(new test_mul_mat(type_a, GGML_TYPE_F32, mk.first, tokens, mk.second, {1, 1}, {1, 1}));
            }
        }
    }

'''
open(path, "w").write(src[:ret] + cases + src[ret:])
EOF
fi

BUILD="$CACHE/build-$VERSION"
if [ ! -x "$BUILD/bin/test-backend-ops" ]; then
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=ON -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF >/dev/null
  cmake --build "$BUILD" --target test-backend-ops -j "$JOBS"
fi

RAW="$OUT/llama_cpp_raw.txt"
taskset -c 0 "$BUILD/bin/test-backend-ops" perf -b CPU -o MUL_MAT \
  -p 'type_a=(q1_0|tq2_0|q8_0),type_b=f32,m=(768|3072),n=(1|8|32|128),k=(768|3072),' >"$RAW"

# Its --output csv carries no timings in perf mode: parse the console lines
#   MUL_MAT(type_a=q1_0,...,m=768,n=128,k=768,...):  159 runs -  8617.85 us/run - ... GFLOPS
"$PY" - "$RAW" "$OUT" <<'EOF'
import csv, os, re, sys
raw, out = sys.argv[1], sys.argv[2]
text = re.sub(r"\x1b\[[0-9;]*m", "", open(raw, errors="replace").read())
rows = []
for params, us in re.findall(r"MUL_MAT\(([^)]*)\):\s+\d+ runs -\s+([0-9.]+) us/run", text):
    p = dict(kv.split("=", 1) for kv in re.findall(r"(\w+=[^,\[]+)", params))
    m, n, k, us = int(p["m"]), int(p["n"]), int(p["k"]), float(us)
    rows.append({"kernel": f"llama.cpp {p['type_a'].upper()}", "M": n, "K": k, "N": m, "us_per_run": us,
                 "gmacs": m * n * k / us / 1e3})
if not rows:
    sys.exit(f"{raw}: no MUL_MAT perf lines; see the file for what test-backend-ops printed")
rows.sort(key=lambda r: (r["kernel"], r["K"], r["N"], r["M"]))
with open(os.path.join(out, "llama_cpp.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
with open(os.path.join(out, "llama_cpp.md"), "w") as f:
    f.write("| kernel | M (tokens) | K | N | us/run | GMAC/s |\n|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['kernel']} | {r['M']} | {r['K']} | {r['N']} | {r['us_per_run']:.1f} | {r['gmacs']:.1f} |\n")
print(open(os.path.join(out, "llama_cpp.md")).read())
EOF
