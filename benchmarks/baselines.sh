#!/usr/bin/env bash
# The bottom rungs of the quality ladder on LibriSpeech test-other (4,950 trials):
# MFCC mean+std and a random ECAPA-TDNN, scored raw and with cohort normalisation
# (cohort = train-clean-100, speaker-disjoint from test-other).
set -euo pipefail
source "$(dirname "$0")/libri.sh"
[ -f "$W/rand-ecapa/encoder.pt" ] || spkemb pretrain "$W/train.tsv" -o "$W/rand-ecapa" --method none --encoder ecapa --seed 0
for m in mfcc-stats rand-ecapa; do
  src=$m; [ $m = rand-ecapa ] && src="$W/rand-ecapa"
  spkemb extract "$src" "$W/test-other.tsv" -o "$W/$m.test.h5"
  spkemb extract "$src" "$W/train.tsv" -o "$W/$m.train.h5"
  for norm in none mean standardize; do
    cohort=(); [ $norm != none ] && cohort=(--cohort "$W/$m.train.h5")
    printf '{"model": "%s", "norm": "%s", "result": ' "$m" "$norm"
    spkemb score "$L/trials-test-other.txt" "$W/$m.test.h5" "${cohort[@]}" --norm $norm --json | tr -d '\n'
    echo "}"
  done
done
