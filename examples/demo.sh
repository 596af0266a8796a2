#!/usr/bin/env bash
# The spkemb demo, about 3 minutes on 2 CPU cores: a synthetic multi-speaker corpus -> manifest +
# trials -> three encoders (MFCC baseline, random ECAPA, ECAPA pretrained for 2 minutes with CEL,
# no labels) -> embeddings in HDF5 -> scores with EER and minDCF.
# Everything lands in ./demo (DEMO_DIR); rerunning skips finished steps.
set -euo pipefail
D=${DEMO_DIR:-demo}
MINUTES=${DEMO_MINUTES:-2}
mkdir -p "$D"

# Utterances of 6-10 s: two 2-s training crops of one utterance then rarely overlap, so the
# self-supervised encoder cannot match crops by their shared audio instead of by voice.
if [ ! -d "$D/corpus" ]; then
  python -m spkemb.data.synthetic "$D/corpus.tmp" --speakers 24 --utts 8 --min-seconds 6 --max-seconds 10 --seed 0
  mv "$D/corpus.tmp" "$D/corpus"
fi
if [ ! -d "$D/noise" ]; then  # babble of other synthetic talkers + coloured noise, for online augmentation
  python -m spkemb.data.synthetic "$D/noise.tmp" --noise 12 --seed 0 && mv "$D/noise.tmp" "$D/noise"
fi

# 1. Manifest of every utterance, and a trial list (speaker-labelled pairs).
spkemb prepare "$D/corpus" -o "$D/manifest.tsv" --trials "$D/trials.txt" --targets 300 --nontargets 3000 --seed 0

# 2. Encoders: random weights, and self-supervised CEL (labels are never read by pretrain).
[ -f "$D/exp/rand-ecapa/encoder.pt" ] || spkemb pretrain "$D/manifest.tsv" -o "$D/exp/rand-ecapa" --method none \
  --encoder ecapa --encoder-opt channels=128
[ -f "$D/exp/cel-ecapa/encoder.pt" ] || spkemb pretrain "$D/manifest.tsv" -o "$D/exp/cel-ecapa" \
  --config examples/configs/cel-cpu.yaml --encoder-opt channels=128 --batch-size 32 --max-minutes "$MINUTES" \
  --noise "$D/noise" --resume

# 3. Embeddings into HDF5, 4. cosine scoring with EER and minDCF.
for model in mfcc-stats rand-ecapa cel-ecapa; do
  src=$model; [ "$model" != mfcc-stats ] && src="$D/exp/$model"
  spkemb extract "$src" "$D/manifest.tsv" -o "$D/$model.h5"
  spkemb score "$D/trials.txt" "$D/$model.h5" -o "$D/$model.scores" --json > "$D/$model.json"
  # Standardising the embeddings (per-dimension mean and std of a cohort, here the store itself) first:
  spkemb score "$D/trials.txt" "$D/$model.h5" --norm standardize --json > "$D/$model.std.json"
done

python - "$D" <<'PY'
import json, sys
d = sys.argv[1]
print(f"\n{'encoder':12s} {'EER %':>7s} {'minDCF0.01':>11s} {'minDCF0.05':>11s} {'EER % (standardised)':>21s}")
for m in ("mfcc-stats", "rand-ecapa", "cel-ecapa"):
    r, s = json.load(open(f"{d}/{m}.json")), json.load(open(f"{d}/{m}.std.json"))
    print(f"{m:12s} {r['eer']:7.2f} {r['mindcf_p0.01']:11.3f} {r['mindcf_p0.05']:11.3f} {s['eer']:21.2f}")
print(f"\nscores: {d}/*.scores   embeddings: {d}/*.h5   experiments: {d}/exp/")
PY
