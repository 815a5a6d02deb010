#!/usr/bin/env bash
# Issue 6 on one GPU, in device calls of under 10 minutes each. Run from the repo root on the GPU
# machine, carrying .whl (../shared/tools/device-wheels.sh: hydra, pyfaidx, ... the machine lacks)
# and .mamba_so (mamba_ssm's CUDA scan, built by benchmarks/device_scan.sh) for the side-by-side rows:
#   bash benchmarks/long_context_gpu.sh tests   # GPU tests: segment equality, conv and scan kernels
#   bash benchmarks/long_context_gpu.sh bench   # benchmarks/long_context.py: the scaling table, then
#                                               # where time goes in one step at 2^20
#   STEPS=320 bash benchmarks/long_context_gpu.sh fit   # experiment=dna_pretrain_1m from the CLI:
#                                               # warm-up 2^14 -> 2^20 (120 steps), then 200 at 2^20
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD:$PWD/.mamba_so${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import hydra, pyfaidx" 2>/dev/null; then  # the GPU machine lacks these
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
case "${1:-bench}" in
  tests)
    timeout "${TEST_S:-500}" python3 -m pytest -m gpu -v -p no:cacheprovider tests/mamba_seq/test_long_sequence.py \
      tests/kernels/test_causal_conv1d.py > "$OUT/gpu_tests.log" 2>&1
    echo "GPU tests rc=$?: $(grep -E '[0-9]+ (passed|failed)' "$OUT/gpu_tests.log" | tail -1)"
    grep -E "(FAILED|ERROR) " "$OUT/gpu_tests.log" | head -20 ;;
  bench)
    python3 benchmarks/long_context.py ${BENCH_ARGS:-} --json "$OUT/long_context.json" 2>&1 | tee "$OUT/long_context.log" | grep -v '^{'
    python3 benchmarks/long_context.py --profile 2>&1 | tee "$OUT/profile.log" | grep -E '^\||^where' ;;
  fit)
    R=$OUT/dna_1m
    t0=$SECONDS
    python3 -m mamba_seq.cli fit experiment=dna_pretrain_1m trainer.max_steps=${STEPS:-320} ${FIT_ARGS:-} \
      callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R > "$OUT/dna_1m.log" 2>&1
    echo "fit rc=$? $((SECONDS - t0)) s"
    grep -E "seq-len warm-up|stopped|val/bpb =|train/bpb =|non-finite|Error" "$OUT/dna_1m.log" | tail -12
    python3 - "$R/logs/metrics.csv" <<'PY'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
loss = [(int(r["step"]), float(r["train/loss"]), float(r["train/seq_len"] or "nan")) for r in rows if r.get("train/loss")]
at_1m = [l for s, l, n in loss if n == 2**20]
print(f"logged train losses: {len(loss)}, at 2^20: {len(at_1m)}, all finite: {all(math.isfinite(l) for _, l, _ in loss)}")
print("val/bpb by step:", [(r["step"], round(float(r["val/bpb"]), 4)) for r in rows if r.get("val/bpb")])
PY
    rm -rf "$R/checkpoints" ;;  # too large to bring back; the log and metrics.csv tell the run
esac
