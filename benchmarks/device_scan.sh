#!/usr/bin/env bash
# One device call: build (or reuse) mamba_ssm's CUDA scan, run the GPU tests, benchmark side by side.
# Run from the repo root on the GPU machine (device tool), carrying .mamba_src (sdist, unpacked) and,
# once built, .mamba_so (the built extension, copied back from $OUT), and .triton_cache if there is one:
#   bash benchmarks/device_scan.sh [tests|bench|all] [extra benchmark args...]
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# The GPU tests compile many kernel variants (each pytest worker on its own): keep Triton's cache in the repo
# (ignored by git), carry it (`.triton_cache`) and bring it back as one archive:
#   mkdir -p .triton_cache && tar xzf <files_at>/triton_cache.tgz -C .triton_cache
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton_cache}
trap 'tar czf "$OUT/triton_cache.tgz" -C "$TRITON_CACHE_DIR" . 2>/dev/null' EXIT
trap 'exit 143' TERM
what=${1:-all}; shift || true
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
SO_DIR=$PWD/.mamba_so
if ! ls "$SO_DIR"/selective_scan_cuda*.so >/dev/null 2>&1; then
  SO_DIR=/tmp/mamba_so
  (python3 benchmarks/selective_scan.py --build-cuda .mamba_src/mamba_ssm-2.3.2.post1 $SO_DIR > "$OUT/build.log" 2>&1; \
   cp $SO_DIR/selective_scan_cuda*.so "$OUT/" 2>/dev/null; echo "build rc=$?" >> "$OUT/build.log") &
  BUILD_PID=$!
else
  BUILD_PID=
fi
if [ "$what" != bench ]; then
  # the quick tests, then the four slow ones (2^20 tokens, > 2^31 elements) side by side, each
  # set under its own limit so that a slow test cannot take the benchmark's time; -v logs under $OUT
  T=tests/kernels/test_selective_scan_triton.py
  SLOW="2pow20 or over_2pow31"
  timeout "${FAST_S:-240}" python3 -m pytest $T -v -n 8 -p no:cacheprovider -k "not ($SLOW)" > "$OUT/gpu_tests.log" 2>&1
  echo "quick GPU tests rc=$?: $(grep -E '[0-9]+ (passed|failed)' "$OUT/gpu_tests.log" | tail -1)"
  timeout "${SLOW_S:-330}" python3 -m pytest $T -v -n 4 -p no:cacheprovider -k "$SLOW" > "$OUT/gpu_tests_slow.log" 2>&1
  echo "slow GPU tests rc=$?: $(grep -E '[0-9]+ (passed|failed)' "$OUT/gpu_tests_slow.log" | tail -1)"
  grep -hE "(PASSED|FAILED|ERROR) " "$OUT/gpu_tests.log" "$OUT/gpu_tests_slow.log" | grep -v PASSED | head -20
fi
if [ -n "$BUILD_PID" ]; then wait $BUILD_PID; tail -3 "$OUT/build.log"; fi
export PYTHONPATH=$SO_DIR:${PYTHONPATH:-}
if [ "$what" != tests ]; then
  python3 benchmarks/selective_scan.py --compare-cuda --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
fi
