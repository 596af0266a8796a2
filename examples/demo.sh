#!/usr/bin/env bash
# The spkemb demo: a synthetic multi-speaker corpus -> manifest + trials -> encoders -> embeddings -> scores.
# Everything lands in ./demo (delete it to start over; rerunning resumes/skips finished steps).
set -euo pipefail
D=${DEMO_DIR:-demo}
mkdir -p "$D"

if [ ! -d "$D/corpus" ]; then
  python -m spkemb.data.synthetic "$D/corpus.tmp" --speakers 24 --utts 8 --seed 0 && mv "$D/corpus.tmp" "$D/corpus"
fi

# 1. Manifest of every utterance, and a trial list (speaker-labelled pairs).
spkemb prepare "$D/corpus" -o "$D/manifest.tsv" --trials "$D/trials.txt" --targets 300 --nontargets 3000 --seed 0

# 2. Encoders: a classical MFCC baseline (built in) and a randomly initialised ECAPA-TDNN.
spkemb pretrain "$D/manifest.tsv" -o "$D/exp/rand-ecapa" --method none --encoder ecapa

# 3. Embeddings into HDF5, 4. cosine scoring with EER and minDCF.
for model in mfcc-stats rand-ecapa; do
  src=$model; [ "$model" = rand-ecapa ] && src="$D/exp/rand-ecapa"
  spkemb extract "$src" "$D/manifest.tsv" -o "$D/$model.h5"
  echo "== $model" >&2
  spkemb score "$D/trials.txt" "$D/$model.h5" -o "$D/$model.scores" --json
done
