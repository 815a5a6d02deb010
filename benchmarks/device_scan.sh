#!/usr/bin/env bash
# One device call: build (or reuse) mamba_ssm's CUDA scan, run the GPU tests, benchmark side by side.
# Run from the repo root on the GPU machine (device tool), carrying .mamba_src (sdist, unpacked) and,
# once built, .mamba_so (the built extension, copied back from $OUT):
#   bash benchmarks/device_scan.sh [tests|bench|all] [extra benchmark args...]
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
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
  python3 -m pytest tests/kernels/test_selective_scan_triton.py -q -x -n 6 -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
if [ -n "$BUILD_PID" ]; then wait $BUILD_PID; tail -3 "$OUT/build.log"; fi
export PYTHONPATH=$SO_DIR:${PYTHONPATH:-}
if [ "$what" != tests ]; then
  python3 benchmarks/selective_scan.py --compare-cuda --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
fi
