#!/usr/bin/env bash
# The spkemb demo, about 6 minutes on 2 CPU cores: a synthetic multi-speaker corpus -> manifest +
# trials -> three encoders (MFCC baseline, random ECAPA, ECAPA pretrained with CEL for a fixed
# number of steps, no labels) -> embeddings in HDF5 -> scores with EER and minDCF.
#
# Training is bounded by steps, not minutes, and runs on one thread, so the table is the same on
# any machine (of the same CPU kind: float rounding differs between instruction sets).
# Everything lands in ./demo (DEMO_DIR); rerunning skips the steps that are done.
#
# Size settings (the defaults are the demo the README quotes; the tests run a much smaller one):
#   DEMO_SPEAKERS=24 DEMO_UTTS=8 DEMO_MIN_SECONDS=6 DEMO_MAX_SECONDS=10 DEMO_NOISE=12
#   DEMO_TARGETS=300 DEMO_NONTARGETS=3000 DEMO_CHANNELS=128 DEMO_BATCH=32 DEMO_STEPS=150 DEMO_THREADS=1
#   DEMO_ENCODERS="mfcc-stats rand-ecapa cel-ecapa" (the rows of the table)
set -euo pipefail
D=${DEMO_DIR:-demo}
SPEAKERS=${DEMO_SPEAKERS:-24}
UTTS=${DEMO_UTTS:-8}
MIN_SECONDS=${DEMO_MIN_SECONDS:-6}
MAX_SECONDS=${DEMO_MAX_SECONDS:-10}
NOISE=${DEMO_NOISE:-12}
TARGETS=${DEMO_TARGETS:-300}
NONTARGETS=${DEMO_NONTARGETS:-3000}
CHANNELS=${DEMO_CHANNELS:-128}
BATCH=${DEMO_BATCH:-32}
STEPS=${DEMO_STEPS:-150}
ENCODERS=${DEMO_ENCODERS:-mfcc-stats rand-ecapa cel-ecapa}
# One compute thread: with 2, two runs of this script on one (busy) machine parted after 20-30 of
# the 150 training steps (float sums split over threads in varying order) and ended 0.1 % EER apart.
# MKL_DYNAMIC / MKL_CBWR keep MKL from changing its thread count or its results with memory alignment.
export OMP_NUM_THREADS=${DEMO_THREADS:-1} MKL_DYNAMIC=FALSE MKL_CBWR=AUTO,STRICT
mkdir -p "$D"

# Utterances of 6-10 s: two 2-s training crops of one utterance then rarely overlap, so the
# self-supervised encoder cannot match crops by their shared audio instead of by voice.
if [ ! -d "$D/corpus" ]; then
  rm -rf "$D/corpus.tmp"
  python -m spkemb.data.synthetic "$D/corpus.tmp" --speakers "$SPEAKERS" --utts "$UTTS" \
    --min-seconds "$MIN_SECONDS" --max-seconds "$MAX_SECONDS" --seed 0
  mv "$D/corpus.tmp" "$D/corpus"
fi
if [ ! -d "$D/noise" ]; then  # babble of other synthetic talkers + coloured noise, for online augmentation
  rm -rf "$D/noise.tmp"
  python -m spkemb.data.synthetic "$D/noise.tmp" --noise "$NOISE" --seed 0 && mv "$D/noise.tmp" "$D/noise"
fi

# 1. Manifest of every utterance, and a trial list (speaker-labelled pairs).
[ -f "$D/manifest.tsv" ] && [ -f "$D/trials.txt" ] || spkemb prepare "$D/corpus" -o "$D/manifest.tsv" \
  --trials "$D/trials.txt" --targets "$TARGETS" --nontargets "$NONTARGETS" --seed 0

# 2. Encoders: random weights, and self-supervised CEL (labels are never read by pretrain).
[[ " $ENCODERS " != *" rand-ecapa "* ]] || [ -f "$D/exp/rand-ecapa/encoder.pt" ] || spkemb pretrain "$D/manifest.tsv" -o "$D/exp/rand-ecapa" --method none \
  --encoder ecapa --encoder-opt "channels=$CHANNELS" --seed 0
[[ " $ENCODERS " != *" cel-ecapa "* ]] || [ -f "$D/exp/cel-ecapa/encoder.pt" ] || spkemb pretrain "$D/manifest.tsv" -o "$D/exp/cel-ecapa" \
  --config examples/configs/cel-cpu.yaml --encoder-opt "channels=$CHANNELS" --batch-size "$BATCH" \
  --max-steps "$STEPS" --seed 0 --noise "$D/noise" --resume

# 3. Embeddings into HDF5 (a store already complete is not recomputed), 4. cosine scoring with EER and minDCF.
for model in $ENCODERS; do
  src=$model; [ "$model" != mfcc-stats ] && src="$D/exp/$model"
  # (a store older than its encoder was made by an earlier training: extract refuses to replace it unasked)
  [ "$model" = mfcc-stats ] || [ ! -f "$D/$model.h5" ] || [ "$D/$model.h5" -nt "$src/encoder.pt" ] || rm -f "$D/$model.h5"
  spkemb extract "$src" "$D/manifest.tsv" -o "$D/$model.h5"
  if [ ! "$D/$model.std.json" -nt "$D/$model.h5" ]; then
    spkemb score "$D/trials.txt" "$D/$model.h5" -o "$D/$model.scores" --json > "$D/$model.json.tmp"
    mv "$D/$model.json.tmp" "$D/$model.json"
    # Standardising the embeddings (per-dimension mean and std of a cohort, here the store itself) first:
    spkemb score "$D/trials.txt" "$D/$model.h5" --norm standardize --json > "$D/$model.std.json.tmp"
    mv "$D/$model.std.json.tmp" "$D/$model.std.json"
  fi
done

python - "$D" $ENCODERS <<'PY'
import json, sys
d = sys.argv[1]
print(f"\n{'encoder':12s} {'EER %':>7s} {'minDCF0.01':>11s} {'minDCF0.05':>11s} {'EER % (standardised)':>21s}")
for m in sys.argv[2:]:
    r, s = json.load(open(f"{d}/{m}.json")), json.load(open(f"{d}/{m}.std.json"))
    print(f"{m:12s} {r['eer']:7.2f} {r['mindcf_p0.01']:11.3f} {r['mindcf_p0.05']:11.3f} {s['eer']:21.2f}")
print(f"\nscores: {d}/*.scores   embeddings: {d}/*.h5   experiments: {d}/exp/")
PY
