#!/usr/bin/env bash
# SSL quality ladder on LibriSpeech: pretrain on train-clean-100 (no labels) for a fixed CPU time,
# extract test-other, score trials-test-other.txt (raw, and standardised with a train-clean-100
# cohort). One JSON line per (method, minutes) on stdout.
#   METHODS="cel simclr moco dino" MINUTES="10" bash benchmarks/ssl_ladder.sh
set -euo pipefail
source "$(dirname "$0")/libri.sh"
for minutes in ${MINUTES:-10}; do
  for m in ${METHODS:-cel simclr moco dino}; do
    exp="$W/ssl-$m-${minutes}min"
    [ -f "$exp/encoder.pt" ] || spkemb pretrain "$W/train.tsv" -o "$exp" --config "examples/configs/$m-cpu.yaml" \
      --max-minutes "$minutes" --noise "$C/noise/speech-commands-background" --resume
    spkemb extract "$exp" "$W/test-other.tsv" -o "$exp/test.h5" --precision bf16
    spkemb extract "$exp" "$W/train.tsv" -o "$exp/train.h5" --precision bf16
    steps=$(tail -n 1 "$exp/metrics.jsonl" | python -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])')
    for norm in none standardize; do
      cohort=(); [ $norm != none ] && cohort=(--cohort "$exp/train.h5")
      printf '{"method": "%s", "minutes": %s, "steps": %s, "norm": "%s", "result": ' "$m" "$minutes" "$steps" "$norm"
      spkemb score "$L/trials-test-other.txt" "$exp/test.h5" "${cohort[@]}" --norm $norm --json | tr -d '\n'
      echo "}"
    done
  done
done
