#!/usr/bin/env bash
# The pseudo-label loop of Miara et al. 2024, as ordinary spkemb commands:
#   pretrain (no labels) -> extract -> cluster -> finetune on the clusters with the loss gate
#   -> extract -> cluster -> finetune -> ...
# Resumable: a finished step is never redone (each leaves its output, written atomically), and an
# interrupted training step continues with --resume. Prints one line per round: clusters, NMI of the
# pseudo-labels against the true speakers (when the manifest has them), the gate's kept fraction and,
# with TRIALS and TEST, the EER.
#
# Usage: examples/pseudo_label_loop.sh TRAIN.tsv OUT_DIR
# (An encoder trained elsewhere can be round 0: copy its encoder.pt and config.yaml into OUT_DIR/round0.)
# Settings (environment): ROUNDS (2), CLUSTERS (number of pseudo-speakers; default: the train
# manifest's speaker count, else 100), INIT_CLUSTERS (two-stage first stage; default 4 x CLUSTERS),
# PRETRAIN_METHOD (dino), PRETRAIN_STEPS (200), FINETUNE_STEPS (200), BATCH (32), ENCODER_LR_SCALE
# (0.1: the pretrained encoder learns at a tenth of the new head's rate; at 1, 100 steps on labels 30 %
# wrong undid the pretraining on LibriSpeech, see benchmarks/README.md),
# CONFIG (a pretrain config file, optional), FT_ARGS / PT_ARGS (extra options), TRIALS + TEST
# (a trial list and the manifest of its utterances, to score each round), PRECISION (fp32),
# CLUSTER_ARGS (extra `spkemb cluster` options, e.g. "--device cuda" or "--ahc sparse").
# At VoxCeleb2 size (1.09M utterances), the seed's counts: CLUSTERS=7500 INIT_CLUSTERS=50000 (k-means
# to 50,000 on the torch matmul k-means, CUDA when there is one, then the sparse kNN-graph AHC of the
# centroids, which --ahc auto picks above 16,384 of them; see benchmarks/README.md, "Scale").
# Each round prints the clustering's wall time and peak memory (also in ROUND/cluster.time).
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true  # a failure inside $(...) stops the script too (bash >= 4.4)

train=${1:?usage: pseudo_label_loop.sh TRAIN.tsv OUT_DIR}
out=${2:?usage: pseudo_label_loop.sh TRAIN.tsv OUT_DIR}
ROUNDS=${ROUNDS:-2}
PRETRAIN_METHOD=${PRETRAIN_METHOD:-dino}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-200}
FINETUNE_STEPS=${FINETUNE_STEPS:-200}
BATCH=${BATCH:-32}
PRECISION=${PRECISION:-fp32}
ENCODER_LR_SCALE=${ENCODER_LR_SCALE:-0.1}
PT_ARGS=${PT_ARGS:-}
CLUSTER_ARGS=${CLUSTER_ARGS:-}
FT_ARGS=${FT_ARGS:-}
mkdir -p "$out"

if [[ -z "${CLUSTERS:-}" ]]; then
  CLUSTERS=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "speaker") c = i; next }
                         c && $c != "" { s[$c] = 1 } END { n = 0; for (k in s) n++; print (n > 1 ? n : 100) }' "$train")
fi
INIT_CLUSTERS=${INIT_CLUSTERS:-$((4 * CLUSTERS))}

# train: run a training command once; continue it with --resume if it was interrupted.
train() {  # train EXP_DIR spkemb-args...
  local exp=$1; shift
  if [[ -f "$exp/encoder.pt" ]]; then return; fi
  if [[ -d "$exp/checkpoints" ]]; then spkemb "$@" -o "$exp" --resume; else spkemb "$@" -o "$exp"; fi
}

json() {  # json FILE KEY: one value of a one-line JSON object
  python3 -c 'import json, sys; v = json.load(open(sys.argv[1])).get(sys.argv[2]); print("n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else v))' "$1" "$2"
}

cfg=()
if [[ -n "${CONFIG:-}" ]]; then cfg=(--config "$CONFIG"); fi
# shellcheck disable=SC2086
train "$out/round0" pretrain "$train" --method "$PRETRAIN_METHOD" --max-steps "$PRETRAIN_STEPS" \
  --batch-size "$BATCH" --precision "$PRECISION" "${cfg[@]}" $PT_ARGS

score_round() {  # score_round EXP: EER on the test trials (n/a without TRIALS)
  local exp=$1
  if [[ -z "${TRIALS:-}" || -z "${TEST:-}" ]]; then echo "n/a"; return; fi
  [[ -f "$exp/test.h5" ]] || spkemb extract "$exp" "$TEST" -o "$exp/test.h5" --precision "$PRECISION"
  # (through a .tmp and a rename: an interrupted or failed run leaves no score.json a rerun would trust)
  if [[ ! -f "$exp/score.json" ]]; then
    spkemb score "$TRIALS" "$exp/test.h5" -o "$exp/scores.txt" --json > "$exp/score.json.tmp" || return 1
    mv "$exp/score.json.tmp" "$exp/score.json"
  fi
  json "$exp/score.json" eer
}

# The method that made round 0 (a round0 folder may also be an encoder trained elsewhere and copied in).
made_by=$(awk '$1 == "method:" { print $2; exit }' "$out/round0/config.yaml" 2>/dev/null || true)
# (Each value is assigned before it is printed: a failure inside $(...) in echo's arguments would
# not stop the script.)
eer=$(score_round "$out/round0")
echo "round 0 (${made_by:-$PRETRAIN_METHOD}): EER $eer"
prev="$out/round0"
for ((r = 1; r <= ROUNDS; r++)); do
  here="$out/round$r"
  mkdir -p "$here"
  [[ -f "$here/train.h5" ]] || spkemb extract "$prev" "$train" -o "$here/train.h5" --precision "$PRECISION"
  if [[ ! -f "$here/cluster.json" ]]; then  # (written last, through a rename: the step's mark of completion)
    method=(--method two-stage --n-init-clusters "$INIT_CLUSTERS")
    n=$(python3 -c 'import h5py, sys; print(len(h5py.File(sys.argv[1])["utt_id"]))' "$here/train.h5")
    if (( INIT_CLUSTERS >= n )); then method=(--method ahc); fi
    # (run and measured in a child: its wall time and peak RSS go to cluster.time)
    # shellcheck disable=SC2086
    python3 -c 'import os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[3:], stdout=open(sys.argv[1], "w"))
_, status, use = os.wait4(child.pid, 0)
rc = os.waitstatus_to_exitcode(status)
if rc == 0:
    open(sys.argv[2], "w").write("%.1f s, peak %.0f MiB\n" % (time.perf_counter() - t, use.ru_maxrss / 1024))
sys.exit(rc)' "$here/cluster.json.tmp" "$here/cluster.time" \
      spkemb cluster "$here/train.h5" -o "$here/labels.txt" "${method[@]}" --n-clusters "$CLUSTERS" --json \
      $CLUSTER_ARGS
    mv "$here/cluster.json.tmp" "$here/cluster.json"
  fi
  took=$(cat "$here/cluster.time" 2>/dev/null || echo "n/a")
  echo "round $r clustering: $took"
  # shellcheck disable=SC2086
  train "$here/exp" finetune "$train" --init "$prev" --labels "$here/labels.txt" --loss-gate \
    --encoder-lr-scale "$ENCODER_LR_SCALE" --max-steps "$FINETUNE_STEPS" --batch-size "$BATCH" \
    --precision "$PRECISION" $FT_ARGS
  kept=$(python3 -c 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if "gate_kept_fraction" in line]
print("%.3f" % rows[-1]["gate_kept_fraction"] if rows else "n/a")' "$here/exp/metrics.jsonl")
  clusters=$(json "$here/cluster.json" n_clusters)
  nmi=$(json "$here/cluster.json" nmi)
  eer=$(score_round "$here/exp")
  echo "round $r: $clusters clusters, NMI $nmi, kept $kept, EER $eer"
  prev="$here/exp"
done
