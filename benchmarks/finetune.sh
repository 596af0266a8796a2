#!/usr/bin/env bash
# Finetuning on LibriSpeech (issue 9): does pretraining help finetuning, and does SupCon+AAM beat AAM?
# Pretrain each SSL method on train-clean-100 without labels (PT_STEPS steps), then finetune with the
# train-clean-100 speakers as classes (3-s segments of each recording, so a speaker has ~4 items;
# 2 crops per item) from scratch and from each pretrained encoder, with AAM and with AAM+SupCon-AAM,
# all at the same budget (FT_STEPS steps, same batch). Scores trials-test-other.txt (cosine).
# One JSON line per system on stdout.
#   PT_STEPS=150 FT_STEPS=150 FT_BATCH=64 INITS="scratch cel simclr moco dino" bash benchmarks/finetune.sh
# SEED (0) seeds the finetuning; FT_TAG ("") is appended to each finetuning folder's name, so runs with
# other FT_STEPS, SEED or defaults (e.g. SupCon's scale, 30 before 2026-11-30 and 10 since) do not
# collide with earlier ones, which a rerun otherwise reuses.
set -euo pipefail
source "$(dirname "$0")/libri.sh"
PT_STEPS=${PT_STEPS:-200}
FT_STEPS=${FT_STEPS:-150}
FT_BATCH=${FT_BATCH:-64}
INITS=${INITS:-scratch cel simclr moco dino}
LOSSES=${LOSSES:-aam aam+supcon-aam}
SEED=${SEED:-0}
FT_TAG=${FT_TAG:-}
B="$W/finetune"
mkdir -p "$B"
[ -f "$W/train-seg.tsv" ] || spkemb prepare "$W/train.tsv" -o "$W/train-seg.tsv" --segment 3
noise=(--noise "$C/noise/speech-commands-background")

report() {  # report NAME EXP: extract test-other, score, one JSON line
  local name=$1 exp=$2
  [ -f "$exp/test.h5" ] || spkemb extract "$exp" "$W/test-other.tsv" -o "$exp/test.h5" --precision bf16 2>/dev/null
  printf '{"system": "%s", "result": ' "$name"
  spkemb score "$L/trials-test-other.txt" "$exp/test.h5" --json | tr -d '\n'
  echo "}"
}

for init in $INITS; do
  [ "$init" = scratch ] && continue
  pre="$B/pre-$init"
  [ -f "$pre/encoder.pt" ] || spkemb pretrain "$W/train.tsv" -o "$pre" --config "examples/configs/$init-cpu.yaml" \
    --max-steps "$PT_STEPS" "${noise[@]}" --resume 2>/dev/null
  report "pretrained $init ($PT_STEPS steps)" "$pre"
done
for loss in $LOSSES; do
  for init in $INITS; do
    exp="$B/ft-$init-${loss//+/-}$FT_TAG"
    from=(); [ "$init" != scratch ] && from=(--init "$B/pre-$init")
    [ -f "$exp/encoder.pt" ] || spkemb finetune "$W/train-seg.tsv" -o "$exp" --config examples/configs/finetune-cpu.yaml \
      --loss "$loss" --max-steps "$FT_STEPS" --batch-size "$FT_BATCH" --seed "$SEED" "${from[@]}" "${noise[@]}" \
      --resume 2>/dev/null
    report "finetune $loss from $init ($FT_STEPS steps, seed $SEED$FT_TAG)" "$exp"
  done
done
