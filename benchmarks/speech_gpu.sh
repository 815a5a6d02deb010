#!/usr/bin/env bash
# Issue 5's speech pipeline on one GPU in one device call (< 10 min): fit the SC09-size LM on the
# spoken digits, test NLL (bits/sample) on the held-out speaker as stored and peak-normalised, then
# generate 1-s clips. The digit classifier that scores the clips is trained and applied on the CPU
# (`mamba-seq fit experiment=digit_classifier`, then `mamba-seq generate`'s scoring or score_clips).
# Run from the repo root on the GPU machine, carrying .whl (../shared/tools/device-wheels.sh) and
# .data/fsdd (a copy of ../shared/data/audio/fsdd: the GPU machine has no shared/):
#   FIT_TIME=00:00:05:30 N=32 bash benchmarks/speech_gpu.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; R=$OUT/runs; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import hydra, soundfile" 2>/dev/null; then  # the GPU machine lacks these
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
DATA="data.root=${FSDD:-.data/fsdd}"
ms() { echo "+ mamba-seq $*" >&2; python3 -m mamba_seq.cli "$@"; }
best() { ls "$1"/checkpoints/step*.ckpt | head -1; }
t0=$SECONDS
ms fit experiment=speech_digits trainer=gpu $DATA +trainer.max_time=${FIT_TIME:-00:00:05:30} \
   callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R/speech_lm > "$R/speech_lm.log" 2>&1
echo "fit rc=$? $((SECONDS - t0)) s"; grep -E "val/bpb =|best checkpoint|Time limit|max_steps" "$R/speech_lm.log" | tail -3
CK=$(best $R/speech_lm)
for norm in none peak; do
  ms test experiment=speech_digits trainer=gpu $DATA data.pad_with=mask data.normalize=$norm ckpt_path="$CK" \
     callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R/test_$norm > "$R/test_$norm.log" 2>&1
  echo "test normalize=$norm rc=$?: $(grep -E 'test/bpb =' "$R/test_$norm.log")"
done
t0=$SECONDS
ms generate ckpt_path="$CK" n=${N:-32} seconds=1 batch_size=${N:-32} seed=0 out_dir=$OUT/generated > "$R/generate.log" 2>&1
echo "generate rc=$? $((SECONDS - t0)) s"; tail -3 "$R/generate.log"
# the device tool brings back a limited number of files: one archive holds every clip and the PNG
tar czf "$OUT/generated.tgz" -C "$OUT" generated && rm -rf "$OUT/generated"
