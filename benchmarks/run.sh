#!/usr/bin/env bash
# All benchmarks; figures go to stdout as JSON lines. Needs the corpora (see benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/bench_extract.py
python benchmarks/bench_score.py
bash benchmarks/baselines.sh
python benchmarks/bench_train.py
python benchmarks/bench_train.py --levers
bash benchmarks/ssl_ladder.sh   # METHODS / MINUTES select the rungs (default: every method, 10 min)
python benchmarks/bench_startup.py
python benchmarks/bench_cluster.py
bash benchmarks/backends.sh      # quality of the scoring back-ends (cosine, AS-norm, PLDA, calibration) + det.png
bash benchmarks/finetune.sh      # PT_STEPS / FT_STEPS / INITS / LOSSES select the systems
python benchmarks/bench_wavlm.py
