#!/usr/bin/env bash
# SupCon+AAM against AAM from the CEL encoder (issue 9): does a lighter or cooler SupCon term, or a
# lower encoder lr, let SupCon+AAM beat AAM at equal budget? (SupCon's scale was the AAM's 30 then; 10
# is the default since.) Each variant finetunes the CEL encoder of
# benchmarks/finetune.sh (run that first) for FT_STEPS steps of FT_BATCH segments, then scores
# trials-test-other.txt (cosine). One JSON line per variant on stdout.
#   FT_STEPS=100 FT_BATCH=32 bash benchmarks/supcon_sweep.sh > sweep.jsonl
set -euo pipefail
source "$(dirname "$0")/libri.sh"
FT_STEPS=${FT_STEPS:-100}
FT_BATCH=${FT_BATCH:-32}
B="$W/finetune"
[ -f "$B/pre-cel/encoder.pt" ] || { echo "run benchmarks/finetune.sh first (no $B/pre-cel)" >&2; exit 2; }
noise=(--noise "$C/noise/speech-commands-background")
# name | finetune options
variants=(
  "aam-enc0.1|--loss aam --encoder-lr-scale 0.1"
  "supcon-w0.2|--loss aam+supcon-aam --method-opt supcon_weight=0.2 --method-opt supcon_scale=30"
  "supcon-s10|--loss aam+supcon-aam --method-opt supcon_scale=10"
  "supcon-w0.2-s10|--loss aam+supcon-aam --method-opt supcon_weight=0.2 --method-opt supcon_scale=10"
  "supcon-w0.2-s10-enc0.1|--loss aam+supcon-aam --method-opt supcon_weight=0.2 --method-opt supcon_scale=10 --encoder-lr-scale 0.1"
)
for v in "${variants[@]}"; do
  name=${v%%|*}
  read -r -a opts <<< "${v#*|}"
  exp="$B/sweep-$name"
  [ -f "$exp/encoder.pt" ] || spkemb finetune "$W/train-seg.tsv" -o "$exp" --config examples/configs/finetune-cpu.yaml \
    --init "$B/pre-cel" --max-steps "$FT_STEPS" --batch-size "$FT_BATCH" "${opts[@]}" "${noise[@]}" --resume 2>/dev/null
  [ -f "$exp/test.h5" ] || spkemb extract "$exp" "$W/test-other.tsv" -o "$exp/test.h5" --precision bf16 2>/dev/null
  printf '{"system": "%s from cel (%s steps)", "result": ' "$name" "$FT_STEPS"
  spkemb score "$L/trials-test-other.txt" "$exp/test.h5" --json | tr -d '\n'
  echo "}"
done
