#!/usr/bin/env bash
# Issue 4's experiments on one GPU, from the CLI, in device calls of under 10 minutes each.
# Run from the repo root on the GPU machine (device tool), carrying .whl (../shared/tools/device-wheels.sh):
#   bash benchmarks/genomics_gpu.sh promoters   # E. coli LM pretraining, then promoters fine-tuned from it
#   bash benchmarks/genomics_gpu.sh brca1       # an LM on the BRCA1 locus: zero-shot scores, then fine-tuned
# Every run writes under $OUT/runs/<name>/ (config, metrics.csv, checkpoints); the test metrics go to
# $OUT/runs/<name>/test.log. TRAINER=cpu STEPS_SCALE=0.002 smoke-tests the commands on a CPU.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; R=$OUT/runs; mkdir -p "$R"
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import hydra, pyfaidx, Bio" 2>/dev/null; then  # the GPU machine lacks these
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
TRAINER=${TRAINER:-gpu}
SCALE=${STEPS_SCALE:-1}
steps() { python3 -c "print(max(2, int($1 * $SCALE)))"; }
# one model size for the LM and everything fine-tuned from it (the checkpoint's backbone must match)
MODEL="model.d_model=128 model.n_layer=6"
ms() { echo "+ mamba-seq $*" >&2; python3 -m mamba_seq.cli "$@" callbacks.progress_bar.refresh_rate=0; }
best() { ls "$1"/checkpoints/step*.ckpt | head -1; }  # save_top_k 1: the one monitored best

what=${1:-promoters}
if [ "$what" = promoters ]; then
  # causal LM on E. coli K-12 (the promoters' genome), last 1% + 1% of the chromosome held out
  t0=$SECONDS
  ms fit experiment=dna_pretrain trainer=$TRAINER $MODEL data.seq_len=1024 data.batch_size=64 \
     trainer.max_steps=$(steps 1500) trainer.val_check_interval=$(steps 250) +trainer.max_time=00:00:03:30 \
     paths.output_dir=$R/ecoli_lm > "$R/ecoli_lm.log" 2>&1
  echo "ecoli_lm rc=$? $((SECONDS - t0)) s"
  for init in pretrained scratch; do
    t0=$SECONDS
    pre=null; [ $init = pretrained ] && pre=$R/ecoli_lm/checkpoints/last.ckpt
    ms fit experiment=promoter_classification trainer=$TRAINER $MODEL task.pretrained=$pre data.batch_size=64 \
       trainer.max_steps=$(steps 1200) trainer.val_check_interval=$(steps 100) +trainer.max_time=00:00:01:30 \
       paths.output_dir=$R/promoters_$init > "$R/promoters_$init.log" 2>&1
    ms test experiment=promoter_classification trainer=$TRAINER $MODEL ckpt_path="$(best $R/promoters_$init)" \
       paths.output_dir=$R/promoters_$init/test > "$R/promoters_$init/test.log" 2>&1
    echo "promoters_$init rc=$? $((SECONDS - t0)) s"
  done
  grep -h -A12 "Test metric" "$R"/promoters_*/test.log
elif [ "$what" = brca1 ]; then
  # a causal LM on the 81-kb reference locus itself (no human genome is bundled): scores the variants
  # zero-shot, and is the backbone the fine-tuned run starts from (LM=<checkpoint> to use another)
  t0=$SECONDS
  ms fit experiment=dna_pretrain trainer=$TRAINER $MODEL data.fasta='${asset:ref_brca1.fa}' \
     data.val_fraction=0.05 data.test_fraction=0.05 data.seq_len=1024 data.batch_size=32 \
     trainer.max_steps=$(steps 1000) trainer.val_check_interval=$(steps 100) +trainer.max_time=00:00:04:00 \
     paths.output_dir=$R/brca1_lm > "$R/brca1_lm.log" 2>&1
  ms test experiment=brca1_variants_zero_shot trainer=$TRAINER task.lm_checkpoint="$(best $R/brca1_lm)" \
     paths.output_dir=$R/brca1_zero_shot > "$R/brca1_zero_shot.log" 2>&1
  echo "brca1_zero_shot rc=$? $((SECONDS - t0)) s"
  t0=$SECONDS
  ms fit experiment=brca1_variants trainer=$TRAINER $MODEL task.pretrained="${LM:-$(best $R/brca1_lm)}" \
     data.batch_size=32 trainer.max_steps=$(steps 1000) trainer.val_check_interval=$(steps 100) \
     +trainer.max_time=00:00:03:00 paths.output_dir=$R/brca1_ft > "$R/brca1_ft.log" 2>&1
  ms test experiment=brca1_variants trainer=$TRAINER $MODEL ckpt_path="$(best $R/brca1_ft)" \
     paths.output_dir=$R/brca1_ft/test > "$R/brca1_ft/test.log" 2>&1
  echo "brca1_ft rc=$? $((SECONDS - t0)) s"
  grep -h -A24 "Test metric" "$R"/brca1_zero_shot.log "$R"/brca1_ft/test.log
fi
