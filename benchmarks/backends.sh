#!/usr/bin/env bash
# Scoring back-ends on LibriSpeech test-other (4,950 trials) for the MFCC baseline and a briefly
# CEL-pretrained ECAPA: cosine, AS-norm, PLDA and calibrated cosine; EER, minDCF, actDCF, Cllr;
# one DET plot of them all (benchmarks/det.png).
#
# Everything the back-ends learn comes from train-clean-100 (speaker-disjoint from test-other): its
# recordings (one of ~12 s per speaker) are cut into 3-s segments (spkemb prepare --segment 3), so each
# speaker has several items. The segments are the AS-norm cohort, the PLDA training set, and the
# source of the calibration's development trials (`spkemb prepare SEGMENTS --trials`); the test
# trials are never used to fit anything.
set -euo pipefail
source "$(dirname "$0")/libri.sh"
B=$(dirname "$0")
T=$L/trials-test-other.txt
STEPS=${CEL_STEPS:-150}
DET=${DET_PNG:-$B/det.png}

[ -f "$W/train-seg.tsv" ] || spkemb prepare "$W/train.tsv" -o "$W/train-seg.tsv" --segment 3
[ -f "$W/dev-trials.txt" ] || spkemb prepare "$W/train-seg.tsv" --trials "$W/dev-trials.txt" --seed 0

if [ ! -f "$W/cel-$STEPS/encoder.pt" ]; then  # --resume: an interrupted run continues from its checkpoint
  spkemb pretrain "$W/train.tsv" -o "$W/cel-$STEPS" --config examples/configs/cel-cpu.yaml --max-steps "$STEPS" \
      --noise "$C/noise/speech-commands-background" --seed 0 --resume
fi
echo "{\"cel_pretrain_last_log\": $(tail -n 1 "$W/cel-$STEPS/metrics.jsonl")}"

result() {  # result ENCODER BACKEND spkemb-score-args...
  local enc=$1 be=$2; shift 2
  printf '{"encoder": "%s", "backend": "%s", "result": ' "$enc" "$be"
  spkemb score "$@" --json | tr -d '\n'
  echo "}"
}

names=(); files=()
for m in mfcc cel; do
  src=mfcc-stats; [ $m = cel ] && src="$W/cel-$STEPS"
  [ -f "$W/$m.test.h5" ] || spkemb extract "$src" "$W/test-other.tsv" -o "$W/$m.test.h5"
  [ -f "$W/$m.seg.h5" ] || spkemb extract "$src" "$W/train-seg.tsv" -o "$W/$m.seg.h5"
  label=MFCC; [ $m = cel ] && label="CEL $STEPS steps"
  result $m cosine "$T" "$W/$m.test.h5" -o "$W/$m-cosine.scores"
  result $m asnorm "$T" "$W/$m.test.h5" -o "$W/$m-asnorm.scores" --cohort "$W/$m.seg.h5" --norm asnorm --top-k 300
  result $m plda "$T" "$W/$m.test.h5" -o "$W/$m-plda.scores" --backend plda --train "$W/$m.seg.h5" \
      --save-plda "$W/$m-plda.npz"
  result $m calibration-dev "$W/dev-trials.txt" "$W/$m.seg.h5" -o "$W/$m-dev.scores" --fit-calibration "$W/$m-cal.json"
  result $m calibrated-cosine "$T" "$W/$m.test.h5" -o "$W/$m-calibrated.scores" --calibration "$W/$m-cal.json"
  for be in cosine asnorm plda; do
    names+=(--name "$label, $be"); files+=(--scores "$W/$m-$be.scores")
  done
done
# Calibration is monotone: calibrated cosine draws the same DET curve as cosine, so it is not drawn.
spkemb score "${files[@]}" "${names[@]}" --det "$DET" --json > "$W/det-summary.json"
echo "{\"det\": \"$DET\", \"bytes\": $(stat -c %s "$DET")}"
