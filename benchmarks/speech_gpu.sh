#!/usr/bin/env bash
# Issue 5's speech pipeline on one GPU, in device calls of under 10 minutes each: fit the SC09-size
# LM on the spoken digits at FSDD's 8 kHz (resuming across calls), then test NLL (bits/sample) on
# the test split as stored and peak-normalised, generate 1-s clips from silence, and continue
# the first 0.1 s of recordings neither model trained on, scored by the digit classifier.
# EXPERIMENT=speech_digits (default; test speaker nicolas; prompts: recordings 0-4 of the held-out
# speakers lucas and nicolas) or speech_digits_all_speakers (test and prompts: recordings 0-4 of all four).
# The classifier is trained on the CPU (`mamba-seq fit experiment=digit_classifier`) and its
# checkpoint carried as $CLASSIFIER (default .data/digit_classifier.ckpt).
# Run from the repo root on the GPU machine, carrying .whl (../shared/tools/device-wheels.sh) and
# .data (fsdd: a copy of ../shared/data/audio/fsdd, the GPU machine has no shared/; the classifier):
#   FIT_TIME=00:00:09:30 bash benchmarks/speech_gpu.sh fit      # first call: a new run
#   FIT_TIME=00:00:19:00 bash benchmarks/speech_gpu.sh resume   # later calls on the same machine; max_time
#       counts the resumed run's earlier time too (Lightning restores its Timer): give the total
#   N=256 bash benchmarks/speech_gpu.sh eval                     # test NLL + generated clips + scores
#   bash benchmarks/speech_gpu.sh profile   # where `mamba-seq generate`'s time goes (cProfile), graph on and off
#   bash benchmarks/speech_gpu.sh export    # best weights as parts under 16 MiB, to generate elsewhere:
#       python benchmarks/checkpoint_parts.py merge weights_part*.pt RUN/checkpoints/best.ckpt (config.yaml in RUN)
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
EXP=${EXPERIMENT:-speech_digits}
F=${FSDD:-.data/fsdd}
if [ "$EXP" = speech_digits ]; then PROMPTS="$F/*_lucas_[0-4].wav,$F/*_nicolas_[0-4].wav"; NP=100
else PROMPTS="$F/*_[0-4].wav"; NP=200; fi
FIT=(experiment=$EXP trainer=gpu $DATA trainer.max_steps=${MAX_STEPS:-5000}
     +trainer.max_time=${FIT_TIME:-00:00:09:00} callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R/speech_lm
     ${FIT_ARGS:-})
case "${1:-fit}" in
  fit|resume)
    t0=$SECONDS
    if [ "$1" = resume ]; then ms fit "${FIT[@]}" ckpt_path=last >> "$R/speech_lm.log" 2>&1
    else ms fit "${FIT[@]}" > "$R/speech_lm.log" 2>&1; fi
    echo "$1 rc=$? $((SECONDS - t0)) s"
    grep -E "val/bpb =|best checkpoint|Time limit|max_steps|Error" "$R/speech_lm.log" | tail -4
    cp "$R/speech_lm.log" "$R/speech_lm/logs/metrics.csv" "$OUT/" 2>/dev/null ;;
  export)  # the best checkpoint's weights in parts small enough to come back (checkpoint_parts.py merge)
    python3 benchmarks/checkpoint_parts.py split "$(best $R/speech_lm)" "$OUT" && cp "$R/speech_lm/config.yaml" "$OUT/"
    ls "$R/speech_lm/checkpoints" ;;
  profile)  # the CLI's decode against benchmarks/generation.py's: 2,000 steps at batch 100, from silence
    CK=$(best $R/speech_lm)
    python3 benchmarks/generation.py --dtype fp32 --batches 1 100 --steps 300 --eager-steps 20 --mem-steps 100 200 \
      2>&1 | tail -12
    for cg in true false; do
      t0=$SECONDS
      python3 -m cProfile -o "$OUT/generate_graph_$cg.prof" -m mamba_seq.cli generate ckpt_path="$CK" n=100 \
        batch_size=100 seconds=0.25 seed=0 cuda_graph=$cg out_dir=$R/profile_$cg > "$R/profile_$cg.log" 2>&1
      echo "generate cuda_graph=$cg rc=$? $((SECONDS - t0)) s: $(grep 'mamba-seq generate:' "$R/profile_$cg.log")"
      python3 -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(14)" \
        "$OUT/generate_graph_$cg.prof" | grep -A16 "ncalls"
    done ;;
  eval)
    CK=$(best $R/speech_lm)
    CLF=${CLASSIFIER:-.data/digit_classifier.ckpt}
    # continuing the first 0.1 s of recordings neither model saw (PROMPTS), and from silence
    for what in prompted silence; do
      t0=$SECONDS
      if [ $what = silence ]; then extra=(n=${N:-256} batch_size=${N:-256})
      else extra=(n=$NP batch_size=100 "prompt=$PROMPTS" prompt_seconds=0.1); fi
      ms generate ckpt_path="$CK" seconds=1 seed=0 classifier="$CLF" out_dir=$OUT/$what "${extra[@]}" \
         > "$R/generate_$what.log" 2>&1
      echo "generate $what rc=$? $((SECONDS - t0)) s"; grep -A2 "mamba-seq generate:" "$R/generate_$what.log"
      # the device tool brings back at most 8 files: one archive per set of clips
      tar czf "$OUT/$what.tgz" -C "$OUT" $what && rm -rf "$OUT/$what"
    done
    for norm in none peak; do
      ms test experiment=$EXP trainer=gpu $DATA data.pad_with=mask data.normalize=$norm ckpt_path="$CK" \
         callbacks.progress_bar.refresh_rate=0 paths.output_dir=$R/test_$norm > "$R/test_$norm.log" 2>&1
      echo "test normalize=$norm rc=$?: $(grep -E 'test/bpb =' "$R/test_$norm.log")"
    done
    cp "$R"/*.log "$R/speech_lm/logs/metrics.csv" "$OUT/" 2>/dev/null; ls "$R/speech_lm/checkpoints" ;;
esac
