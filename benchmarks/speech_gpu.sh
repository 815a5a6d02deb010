#!/usr/bin/env bash
# Issue 5's speech pipeline on one GPU, in device calls of under 10 minutes each: fit the SC09-size
# LM on the spoken digits (resuming across calls), then test NLL (bits/sample) on the held-out
# speaker as stored and peak-normalised, and generate 1-s clips. The digit classifier that scores
# the clips is trained and applied on the CPU (`mamba-seq fit experiment=digit_classifier`, then
# `mamba-seq generate`'s scoring or score_clips).
# Run from the repo root on the GPU machine, carrying .whl (../shared/tools/device-wheels.sh) and
# .data/fsdd (a copy of ../shared/data/audio/fsdd: the GPU machine has no shared/):
#   FIT_TIME=00:00:09:00 bash benchmarks/speech_gpu.sh fit      # first call: a new run
#   FIT_TIME=00:00:18:00 bash benchmarks/speech_gpu.sh resume   # later calls on the same machine; max_time
#       counts the resumed run's earlier time too (Lightning restores its Timer): give the total
#   N=64 bash benchmarks/speech_gpu.sh eval                      # test NLL + generated clips
# The run lives in outputs/speech_gpu (ignored by git), which stays on the machine between calls
# while it is held; it goes back after 30 s idle, so issue the next call at once. MAX_STEPS sets
# the length of the LR schedule (warm-up, then cosine to 0.1 lr).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
R=${RUN_DIR:-$PWD/outputs/speech_gpu}; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import hydra, soundfile" 2>/dev/null; then  # the GPU machine lacks these
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
DATA="data.root=${FSDD:-.data/fsdd}"
ms() { echo "+ mamba-seq $*" >&2; python3 -m mamba_seq.cli "$@"; }
best() { ls "$1"/checkpoints/step*.ckpt | head -1; }
FIT=(experiment=speech_digits trainer=gpu $DATA trainer.max_steps=${MAX_STEPS:-5000}
     +trainer.max_time=${FIT_TIME:-00:00:09:00} callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R/speech_lm)
case "${1:-fit}" in
  fit|resume)
    t0=$SECONDS
    if [ "$1" = resume ]; then ms fit "${FIT[@]}" ckpt_path=last >> "$R/speech_lm.log" 2>&1
    else ms fit "${FIT[@]}" > "$R/speech_lm.log" 2>&1; fi
    echo "$1 rc=$? $((SECONDS - t0)) s"
    grep -E "val/bpb =|best checkpoint|Time limit|max_steps|Error" "$R/speech_lm.log" | tail -4
    cp "$R/speech_lm.log" "$R/speech_lm/logs/metrics.csv" "$OUT/" 2>/dev/null ;;
  eval)
    CK=$(best $R/speech_lm)
    for norm in none peak; do
      ms test experiment=speech_digits trainer=gpu $DATA data.pad_with=mask data.normalize=$norm ckpt_path="$CK" \
         callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R/test_$norm > "$R/test_$norm.log" 2>&1
      echo "test normalize=$norm rc=$?: $(grep -E 'test/bpb =' "$R/test_$norm.log")"
    done
    t0=$SECONDS
    ms generate ckpt_path="$CK" n=${N:-64} seconds=1 batch_size=${N:-64} seed=0 out_dir=$OUT/generated > "$R/generate.log" 2>&1
    echo "generate rc=$? $((SECONDS - t0)) s"; tail -3 "$R/generate.log"
    # the device tool brings back a limited number of files: one archive holds every clip and the PNG
    tar czf "$OUT/generated.tgz" -C "$OUT" generated && rm -rf "$OUT/generated"
    cp "$CK" "$OUT/speech_lm_best.ckpt"; cp "$R"/*.log "$OUT/" ;;
esac
