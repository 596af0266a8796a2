# Sourced by the benchmark scripts: find the corpora ($C, $L), the work folder ($W), and split the
# LibriSpeech samples into $W/test-other.tsv and $W/train.tsv (once).
C=${SPKEMB_CORPORA:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/corpora}
L=$C/librispeech-samples
[ -d "$L" ] || { echo "skipped: no corpora at $C (set SPKEMB_CORPORA)" >&2; exit 0; }
W=${BENCH_DIR:-benchmarks/out}
mkdir -p "$W"
[ -f "$W/train.tsv" ] || {
  spkemb prepare "$L" -o "$W/libri.tsv"
  awk -F'\t' 'NR==1 || $1 ~ /^test-other\//' "$W/libri.tsv" > "$W/test-other.tsv"
  awk -F'\t' 'NR==1 || $1 ~ /^train-clean-100\//' "$W/libri.tsv" > "$W/train.tsv"
}
