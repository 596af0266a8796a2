#!/usr/bin/env bash
# GPU check of spkemb: a few training steps of every method at bf16 and fp16, finetuning, torchrun,
# and extraction speed, on a one-GPU machine, in under 8 minutes, with nothing downloaded.
#
#   DEVICE=cuda bash benchmarks/gpu_check.sh          # on the GPU machine (the default)
#   DEVICE=cpu STEPS=2 bash benchmarks/gpu_check.sh   # smoke test of this script on a CPU-only machine
#
# What it does, each command a step under `timeout`:
#   1. a tiny synthetic corpus + noise (python -m spkemb.data.synthetic) and `spkemb prepare`;
#      on CUDA also a larger corpus for extraction speed;
#   2. `spkemb pretrain` (simclr, moco, cel, dino; *-cpu.yaml configs, small batch) for STEPS steps
#      at bf16 and fp16 (and cel at the config's `precision: auto`), and `spkemb finetune` (aam,
#      aam+supcon-aam) at bf16 and fp16;
#   3. NCCL (gloo on CPU) brought up directly under torchrun (see the note there), then
#      `torchrun --standalone --nproc_per_node NPROC -m spkemb pretrain|finetune`;
#   4. `spkemb extract --json` of the CEL encoder (fp32, bf16, fp16 on CUDA) and of a WavLM-Base+ MHFA
#      encoder with random weights (`pretrain --method none`), with the realtime factors, and the
#      cosine between the fp32 and low-precision embeddings; `torchrun -m spkemb extract` (XNPROC ranks)
#      against one process, and its rerun;
#   5. on CUDA: `spkemb cluster --method two-stage` of a synthesised 1.09M x 192 store (50,000 -> 7,500),
#      and of a 100k sample on CUDA against the CPU (NMI between the labelings);
# Each step prints `PASS name seconds [note]`, `FAIL name rc=N seconds` plus the tail of its stderr, or
# `SKIP name (why)`, and the script goes on. At the end: a summary table, summary.tsv, summary.json,
# extract.tsv, console.log and logs.tar.gz (every step's stdout/stderr, each run's config.yaml and
# metrics.jsonl) in RESULTS. Exit status: 0 when no step failed, 1 otherwise.
#
# Folders: the work (corpora, experiments, embeddings, a 380-MB WavLM encoder.pt) goes to WORK, a new
# temporary folder unless set. RESULTS (default: $OUT when set, else WORK) gets only the few result
# files above, never deeper than one folder: the device tool brings back at most 8 files from $OUT,
# 16 MiB each, and nothing at all when $OUT holds too much.
#
# Settings (environment):
#   DEVICE=cuda|cuda:N|cpu  STEPS=3  BATCH=8  CHANNELS= (ECAPA channels; empty = the configs' 256)
#   WORKERS= (DataLoader workers in training; default 2 on CUDA, 0 on CPU)
#   NPROC=1 (torchrun processes: one GPU each, so 1 on a one-GPU machine; 2 on the CPU runs gloo DDP)
#   XNPROC (ranks of the torchrun extraction; default 2 on the CPU, NPROC on CUDA)
#   SPEAKERS=8 UTTS=4 (training corpus, 3-5 s utterances)
#   XSPEAKERS/XUTTS (extraction corpus of 6-10 s utterances; default 40 x 10 on CUDA, none on CPU: the
#     training corpus, and its first 8 utterances for WavLM)
#   BUDGET=450 (seconds; a step gets at most what is left of it, and steps past it are skipped)
#   STEP_TIMEOUT=150  COMPILE=0 (1: also a --compile pretraining run)  KEEP=0 (1: keep checkpoints
#   and the WavLM encoder.pt in WORK)  PY (the Python; default .venv/bin/python if it imports torch,
#   else python3)  WHEELS=.whl (wheels installed with pip --no-index into WORK/site when spkemb's
#   imports fail, e.g. soundfile, cffi and pycparser, which the GPU image lacks)
set -uo pipefail  # no -e: a failing step is reported and the script goes on

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-3}
BATCH=${BATCH:-8}
CHANNELS=${CHANNELS:-}
NPROC=${NPROC:-1}
SPEAKERS=${SPEAKERS:-8}
UTTS=${UTTS:-4}
BUDGET=${BUDGET:-450}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
COMPILE=${COMPILE:-0}
KEEP=${KEEP:-0}
WHEELS=${WHEELS:-$ROOT/.whl}
case $DEVICE in
  cpu) ON_CPU=1; DEF_WORKERS=0; DEF_XSPEAKERS=0; DEF_XUTTS=0; BACKEND=gloo ;;
  cuda | cuda:*) ON_CPU=0; DEF_WORKERS=2; DEF_XSPEAKERS=40; DEF_XUTTS=10; BACKEND=nccl ;;
  *) echo "gpu_check: DEVICE must be cuda, cuda:N or cpu, not '$DEVICE'" >&2; exit 2 ;;
esac
WORKERS=${WORKERS:-$DEF_WORKERS}
XSPEAKERS=${XSPEAKERS:-$DEF_XSPEAKERS}
XUTTS=${XUTTS:-$DEF_XUTTS}
# On the CPU one compute thread per process: the smoke test shares its cores with other jobs.
[ "$ON_CPU" = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export LC_NUMERIC=C  # a '.' in EPOCHREALTIME and awk's numbers
export PYTHONUNBUFFERED=1 SPKEMB_LOG_INTERVAL=${SPKEMB_LOG_INTERVAL:-10}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded (and nothing here should try)

MADE_WORK=0
if [ -z "${WORK:-}" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
  MADE_WORK=1
fi
mkdir -p "$WORK/logs" "$WORK/exp" || exit 2
WORK=$(cd "$WORK" && pwd)
RESULTS=${RESULTS:-${OUT:-$WORK}}
mkdir -p "$RESULTS" || exit 2
LOG=$RESULTS/console.log
SUMMARY=$WORK/summary.tsv
XTSV=$WORK/extract.tsv
: >"$LOG"
printf 'name\tstatus\trc\tseconds\tnote\n' >"$SUMMARY"
printf 'name\tencoder\tprecision\tutterances\taudio_s\twall_s\trealtime_factor\n' >"$XTSV"

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
T0=$(now)
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '%s\n' "$*" | tee -a "$LOG"; }
note_of() { printf '%s' "$1" | tr '\t\n' '  '; }
record() {  # name status rc seconds note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(note_of "${5:-}")" >>"$SUMMARY"
}

# run_step NAME NEEDS CMD...: NEEDS is ':'-separated paths that must exist first ('-': none). Stdout
# goes to logs/NAME.out, stderr to logs/NAME.err; a hook check_NAME-style function may be given in
# CHECK (it reads the step's stdout, prints a note, returns non-zero to turn a PASS into a FAIL).
CHECK=
BROKEN=0
run_step() {
  local name=$1 needs=$2; shift 2
  local check=$CHECK; CHECK=
  local left need
  if [ "$BROKEN" = 1 ]; then say "SKIP $name (spkemb does not import)"; record "$name" SKIP - 0 "no spkemb"; return 0; fi
  left=$(awk -v t0="$T0" -v b="$BUDGET" -v n="$(now)" 'BEGIN { printf "%d", t0 + b - n }')
  if [ "$left" -lt 10 ]; then
    say "SKIP $name (the ${BUDGET}-s budget is spent)"; record "$name" SKIP - 0 "budget spent"; return 0
  fi
  if [ "$needs" != - ]; then
    local -a list
    IFS=: read -r -a list <<<"$needs"
    for need in "${list[@]}"; do
      if [ ! -e "$need" ]; then
        say "SKIP $name (needs ${need#"$WORK"/}, which an earlier step did not make)"
        record "$name" SKIP - 0 "needs ${need#"$WORK"/}"; return 0
      fi
    done
  fi
  local limit=$STEP_TIMEOUT
  [ "$left" -lt "$limit" ] && limit=$left
  local t rc secs note=
  t=$(now)
  timeout -k 10 "$limit" "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" </dev/null
  rc=$?
  secs=$(since "$t")
  if [ "$rc" = 0 ] && [ -n "$check" ]; then
    note=$("$check" "$name" 2>>"$WORK/logs/$name.err") || rc=$?
    [ "$rc" = 0 ] || note="check failed: $note"
  fi
  if [ "$rc" = 0 ]; then
    say "PASS $name $secs${note:+  $note}"
    record "$name" PASS 0 "$secs" "$note"
  else
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out after ${limit} s${note:+; $note}"
    say "FAIL $name rc=$rc $secs${note:+  $note}"
    # the error lines first (torchrun ends its stderr with its own report, after the worker's error)
    grep -E 'spkemb: error|Error|error:|Exception' "$WORK/logs/$name.err" | grep -v '^ *error_file' | tail -n 4 \
      | sed 's/^/    ! /' | tee -a "$LOG"
    tail -n 12 "$WORK/logs/$name.err" | sed 's/^/    | /' | tee -a "$LOG"
    record "$name" FAIL "$rc" "$secs" "$note"
  fi
  return 0
}
skip() { say "SKIP $1 ($2)"; record "$1" SKIP - 0 "$2"; }

# -- the Python, and what it imports ----------------------------------------------------------------
if [ -z "${PY:-}" ]; then
  PY=python3
  [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c 'import torch' 2>/dev/null && PY=$ROOT/.venv/bin/python
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # `python -m spkemb` without installing it
SPK=("$PY" -m spkemb)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")

cat >"$WORK/helper.py" <<'PY'
"""gpu_check.sh's helpers: environment report, import check, JSON notes, embedding comparison."""
import json, os, sys


def env() -> None:
    import platform
    import torch
    print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}; "
          f"CUDA build {torch.version.cuda}; cuda available {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
              f"{torch.cuda.device_count()} device(s); bf16 supported {torch.cuda.is_bf16_supported()}; "
              f"cuDNN {torch.backends.cudnn.version()}; NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
    print(f"distributed: nccl {torch.distributed.is_nccl_available()}, gloo {torch.distributed.is_gloo_available()}")
    print(f"CPU cores {os.cpu_count()}, OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', '-')}")


def imports() -> None:
    missing = []
    for name in ("torch", "torchaudio", "numpy", "scipy", "sklearn", "soundfile", "h5py", "yaml", "typer", "rich",
                 "safetensors"):
        try:
            __import__(name)
        except Exception as err:  # noqa: BLE001
            missing.append(f"{name} ({type(err).__name__}: {err})")
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        sys.exit(1)
    import spkemb.cli.app  # noqa: F401
    import spkemb.train.trainer  # noqa: F401
    print("imports ok")


def _last_json(path: str) -> dict:
    text = open(path, encoding="utf-8").read()
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.find("{"):])


def train_note(path: str, device: str) -> None:
    """The training summary; fails when it ran on another device or took no step."""
    s = _last_json(path)
    if s.get("method") == "none":
        print(f"random encoder, {s.get('parameters', 0) / 1e6:.1f} M parameters")
        return
    note = (f"steps={s.get('steps')} loss={s.get('loss') if s.get('loss') is None else round(s['loss'], 4)} "
            f"train_s={s.get('elapsed_s')} device={s.get('device')} world={s.get('world_size')} "
            f"precision={s.get('precision')}")
    print(note)
    want = "cpu" if device == "cpu" else "cuda"
    if not str(s.get("device", "")).startswith(want) or not s.get("steps"):
        sys.exit(1)


def extract_note(path: str, name: str, encoder: str, precision: str, tsv: str) -> None:
    s = _last_json(path)
    row = [name, encoder, precision, s.get("embeddings"), s.get("audio_seconds"), s.get("wall_seconds"),
           s.get("realtime_factor")]
    with open(tsv, "a", encoding="utf-8") as f:
        f.write("\t".join(str(x) for x in row) + "\n")
    print(f"{s.get('embeddings')} utts, {s.get('audio_seconds', 0):.0f} audio-s in {s.get('wall_seconds')} s = "
          f"{s.get('realtime_factor')}x real time")
    if not s.get("embeddings") or s.get("failed"):
        sys.exit(1)


def compare(ref: str, other: str) -> None:
    """Cosine between the fp32 embeddings and low-precision ones (raw and centred on the fp32 mean)."""
    import numpy as np
    from spkemb.embeddings.store import read_embeddings
    a, b = read_embeddings(ref), read_embeddings(other)
    if list(a.ids) != list(b.ids) or a.vectors.shape != b.vectors.shape:
        print("the stores hold different utterances")
        sys.exit(1)
    x, y = a.vectors.astype(np.float64), b.vectors.astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        print("non-finite embeddings")
        sys.exit(1)

    def cos(p, q):
        return (p * q).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(q, axis=1)

    m = x.mean(0)
    print(f"min cosine {cos(x, y).min():.4f}, centred {cos(x - m, y - m).min():.4f} "
          f"(mean {cos(x - m, y - m).mean():.4f}) over {len(x)} utts")


def dist_check(backend: str, device: str) -> None:
    """What spkemb.utils.distributed.setup does under torchrun with WORLD_SIZE > 1 (init_process_group with
    device_id on CUDA), then the collectives spkemb uses, in a world of one (torchrun's env)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather as gather_autograd
    dev = torch.device("cpu")
    kwargs = {}
    if device != "cpu":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        kwargs["device_id"] = dev
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    t = torch.arange(4.0, device=dev)
    dist.all_reduce(t)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    x = torch.randn(3, 5, device=dev, requires_grad=True)
    torch.cat(list(gather_autograd(x))).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, {"rank": dist.get_rank()})
    box = [{"step": 3}]
    dist.broadcast_object_list(box, src=0)
    dist.barrier()
    print(f"{backend} on {dev}: world {dist.get_world_size()}, all_reduce/all_gather/autograd all_gather/"
          f"all_gather_object/broadcast_object_list/barrier ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    fn = globals()[sys.argv[1]]
    fn(*sys.argv[2:])
PY
H=("$PY" "$WORK/helper.py")

check_train() { "${H[@]}" train_note "$WORK/logs/$1.out" "$DEVICE"; }
XENC='' XPREC=''  # set for each extract step
check_extract() { "${H[@]}" extract_note "$WORK/logs/$1.out" "$1" "$XENC" "$XPREC" "$XTSV"; }
check_stdout() { tail -n 1 "$WORK/logs/$1.out"; }

say "gpu_check: DEVICE=$DEVICE STEPS=$STEPS BATCH=$BATCH CHANNELS=${CHANNELS:-config} WORKERS=$WORKERS NPROC=$NPROC BUDGET=${BUDGET}s"
say "gpu_check: WORK=$WORK RESULTS=$RESULTS PY=$PY ($(date -u +%FT%TZ), $(uname -n))"
if [ "$ON_CPU" = 1 ]; then
  say "gpu_check: CPU mode: fp16 steps are skipped (spkemb refuses fp16 without CUDA, spkemb/utils/runtime.py:43);"
  say "           torchrun and the process-group check use gloo instead of NCCL; OMP_NUM_THREADS=$OMP_NUM_THREADS"
fi
if [ "$ON_CPU" = 0 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv,noheader 2>&1 \
    | sed 's/^/gpu_check: nvidia-smi: /' | tee -a "$LOG"
fi

# -- 0. the Python environment ------------------------------------------------------------------------
if ! "${H[@]}" imports >"$WORK/logs/wheels.out" 2>&1; then
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "gpu_check: $(tail -n 1 "$WORK/logs/wheels.out"); installing $WHEELS/*.whl into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
      >>"$WORK/logs/wheels.out" 2>&1
    export PYTHONPATH=$PYTHONPATH:$WORK/site
  fi
fi
CHECK=check_stdout run_step env - "${H[@]}" env
[ -s "$WORK/logs/env.out" ] && sed 's/^/    /' "$WORK/logs/env.out" | tee -a "$LOG"
CHECK=check_stdout run_step imports - "${H[@]}" imports
if ! grep -q '^PASS imports' "$LOG"; then
  BROKEN=1
  say "gpu_check: spkemb cannot be imported with $PY; nothing else can run. Carry the missing packages as"
  say "  wheels in $WHEELS (see the device tool's README: pip download --only-binary=:all: --python-version 3.12 ...)"
fi

# -- 1. corpora ------------------------------------------------------------------------------------
D=$WORK
run_step corpus - "$PY" -m spkemb.data.synthetic "$D/corpus" --speakers "$SPEAKERS" --utts "$UTTS" \
  --min-seconds 3 --max-seconds 5 --seed 0
run_step noise - "$PY" -m spkemb.data.synthetic "$D/noise" --noise 4 --seed 0
run_step prepare "$D/corpus" "${SPK[@]}" prepare "$D/corpus" -o "$D/manifest.tsv" --json
MAN=$D/manifest.tsv
XMAN=$MAN
WMAN=$MAN
if [ "$XSPEAKERS" -gt 0 ] && [ "$XUTTS" -gt 0 ]; then
  run_step xcorpus - "$PY" -m spkemb.data.synthetic "$D/xcorpus" --speakers "$XSPEAKERS" --utts "$XUTTS" \
    --min-seconds 6 --max-seconds 10 --seed 1
  run_step xprepare "$D/xcorpus" "${SPK[@]}" prepare "$D/xcorpus" -o "$D/xmanifest.tsv" --json
  XMAN=$D/xmanifest.tsv
  WMAN=$XMAN
elif [ -s "$MAN" ]; then
  head -n 9 "$MAN" >"$D/small.tsv"  # the header and 8 utterances: WavLM-Base+ is slow on a CPU
  WMAN=$D/small.tsv
fi

# -- 2. pretraining and finetuning, bf16 and fp16 --------------------------------------------------
COMMON=(--device "$DEVICE" --max-steps "$STEPS" --batch-size "$BATCH" --workers "$WORKERS" --seed 0 --json)
ENC=()
[ -n "$CHANNELS" ] && ENC=(--encoder-opt "channels=$CHANNELS")
PRECS=(bf16 fp16)
for method in simclr moco cel dino; do
  for prec in "${PRECS[@]}"; do
    name=pretrain-$method-$prec
    if [ "$ON_CPU" = 1 ] && [ "$prec" = fp16 ]; then skip "$name" "fp16 needs CUDA; CPU mode"; continue; fi
    CHECK=check_train run_step "$name" "$MAN" "${SPK[@]}" pretrain "$MAN" -o "$D/exp/$name" \
      --config "examples/configs/$method-cpu.yaml" "${ENC[@]}" --noise "$D/noise" --precision "$prec" "${COMMON[@]}"
  done
done
# the CPU configs' `precision: auto` on this device (bf16 where supported: the summary's "precision" says which)
CHECK=check_train run_step pretrain-cel-auto "$MAN" "${SPK[@]}" pretrain "$MAN" -o "$D/exp/pretrain-cel-auto" \
  --config examples/configs/cel-cpu.yaml "${ENC[@]}" --noise "$D/noise" "${COMMON[@]}"

INIT=$D/exp/pretrain-cel-bf16/encoder.pt
for loss in aam aam+supcon-aam; do
  for prec in "${PRECS[@]}"; do
    name=finetune-${loss//+/-}-$prec
    if [ "$ON_CPU" = 1 ] && [ "$prec" = fp16 ]; then skip "$name" "fp16 needs CUDA; CPU mode"; continue; fi
    CHECK=check_train run_step "$name" "$MAN:$INIT" "${SPK[@]}" finetune "$MAN" -o "$D/exp/$name" --init "$INIT" \
      --config examples/configs/finetune-cpu.yaml "${ENC[@]}" --loss "$loss" --noise "$D/noise" --precision "$prec" \
      "${COMMON[@]}"
  done
done

# -- 3. torchrun ---------------------------------------------------------------------------------------
# Under torchrun with WORLD_SIZE=1 spkemb joins no process group (spkemb/utils/distributed.py:43 needs
# WORLD_SIZE > 1) and trains without DDP (spkemb/train/trainer.py _wrap), so the torchrun steps check the
# launch and LOCAL_RANK device choice only; dist-init brings up the backend spkemb would use
# (NCCL on CUDA, as distributed.py:43-46 does, gloo on the CPU) and runs the collectives spkemb calls.
# Two ranks cannot share one GPU under NCCL, so DDP itself needs a machine with 2 GPUs (NPROC=2).
if [ "$NPROC" = 1 ]; then
  say "gpu_check: note: torchrun --nproc_per_node 1 sets WORLD_SIZE=1, and spkemb then joins no process group"
  say "  (spkemb/utils/distributed.py:43): no $BACKEND/DDP in the torchrun steps; dist-init checks $BACKEND directly"
fi
CHECK=check_stdout run_step "dist-init-$BACKEND" - "${TORCHRUN[@]}" "$WORK/helper.py" dist_check "$BACKEND" "$DEVICE"
CHECK=check_train run_step torchrun-pretrain-cel-bf16 "$MAN" "${TORCHRUN[@]}" -m spkemb pretrain "$MAN" \
  -o "$D/exp/torchrun-pretrain-cel-bf16" --config examples/configs/cel-cpu.yaml "${ENC[@]}" --noise "$D/noise" \
  --precision bf16 "${COMMON[@]}"
CHECK=check_train run_step torchrun-finetune-aam-supcon-aam-bf16 "$MAN:$INIT" "${TORCHRUN[@]}" -m spkemb finetune \
  "$MAN" -o "$D/exp/torchrun-finetune-aam-supcon-aam-bf16" --init "$INIT" --config examples/configs/finetune-cpu.yaml \
  "${ENC[@]}" --loss aam+supcon-aam --noise "$D/noise" --precision bf16 "${COMMON[@]}"

# -- 4. extraction speed ---------------------------------------------------------------------------
XPRECS=(fp32 bf16)
[ "$ON_CPU" = 0 ] && XPRECS+=(fp16)
# A CPU without AVX512-BF16 or AMX runs bf16 emulated (about 7x slower than fp32): the WavLM bf16 step
# does not fit its time there, so CPU mode skips it on such a CPU.
EMULATED_BF16=0
[ "$ON_CPU" = 1 ] && EMULATED_BF16=$("$PY" -c 'from spkemb.utils.runtime import cpu_has_bf16; print(int(not cpu_has_bf16()))')
too_slow() { [ "$2" = bf16 ] && [ "$EMULATED_BF16" = 1 ] && [ "$1" = wavlm ]; }  # too_slow NAME PREC
# extract_all NAME ENCODER EXP MANIFEST: extract at each precision, then compare each low one with fp32.
extract_all() {
  local name=$1 enc=$2 exp=$3 man=$4 prec
  for prec in "${XPRECS[@]}"; do
    if too_slow "$name" "$prec"; then
      skip "extract-$name-$prec" "bf16 is emulated on this CPU (no AVX512-BF16 or AMX)"
      skip "compare-$name-$prec-fp32" "no bf16 store"
      continue
    fi
    XENC=$enc XPREC=$prec CHECK=check_extract run_step "extract-$name-$prec" "$man:$exp/encoder.pt" \
      "${SPK[@]}" extract "$exp" "$man" -o "$D/$name-$prec.h5" --device "$DEVICE" --precision "$prec" --json
  done
  for prec in "${XPRECS[@]:1}"; do
    too_slow "$name" "$prec" && continue  # (skipped above)
    CHECK=check_stdout run_step "compare-$name-$prec-fp32" "$D/$name-fp32.h5:$D/$name-$prec.h5" \
      "${H[@]}" compare "$D/$name-fp32.h5" "$D/$name-$prec.h5"
  done
}
extract_all ecapa ecapa-cel "$D/exp/pretrain-cel-bf16" "$XMAN"

# ==== BEGIN torchrun extraction (issue 18 item 3) ========================================================
# `torchrun -m spkemb extract`: the ranks embed their parts (cuda:LOCAL_RANK each, NCCL; gloo on the CPU)
# and rank 0 merges them. Checked against one process on the same utterances (--max-batch 1: no padding,
# so the batches cannot differ), then rerun: the merged store must be found complete. XNPROC ranks
# (default: 2 on the CPU, NPROC on CUDA, as two ranks cannot share one GPU under NCCL).
XNPROC=${XNPROC:-$([ "$ON_CPU" = 1 ] && echo 2 || echo "$NPROC")}
[ -s "$XMAN" ] && head -n 17 "$XMAN" >"$D/tr.tsv"  # the header and 16 utterances
TREXP=$D/exp/pretrain-cel-bf16
TRARGS=("$D/tr.tsv" --device "$DEVICE" --max-batch 1 --json)
run_step extract-torchrun-single "$D/tr.tsv:$TREXP/encoder.pt" "${SPK[@]}" extract "$TREXP" "${TRARGS[@]}" \
  -o "$D/tr-single.h5"
run_step "extract-torchrun-$XNPROC" "$D/tr.tsv:$TREXP/encoder.pt" "$PY" -m torch.distributed.run \
  --standalone --nproc_per_node "$XNPROC" -m spkemb extract "$TREXP" "${TRARGS[@]}" -o "$D/tr-ranks.h5"
CHECK=check_stdout run_step extract-torchrun-same "$D/tr-single.h5:$D/tr-ranks.h5" "$PY" -c '
import sys, numpy as np
from spkemb.embeddings.store import read_embeddings
a, b = read_embeddings(sys.argv[1]), read_embeddings(sys.argv[2])
if a.ids != b.ids:
    sys.exit("the torchrun store holds other utterances, or another order")
d = float(np.abs(a.vectors - b.vectors).max())
print(f"same ids and order; max |difference| {d:.2e} over {len(a)} utts")
sys.exit(0 if np.allclose(a.vectors, b.vectors, atol=1e-4, rtol=1e-4) else 1)' "$D/tr-single.h5" "$D/tr-ranks.h5"
CHECK=check_stdout run_step extract-torchrun-rerun "$D/tr-ranks.h5" "$PY" -c '
import json, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
done = out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1]).get("up_to_date")
print("rerun: already complete" if done else f"rerun did not find the store complete: {out.stderr[-300:]}")
sys.exit(0 if done else 1)' "$PY" -m torch.distributed.run --standalone --nproc_per_node "$XNPROC" -m spkemb extract \
  "$TREXP" "${TRARGS[@]}" -o "$D/tr-ranks.h5"
# ==== END torchrun extraction ===========================================================================

# WavLM Base+ (94 M parameters) + MHFA with random weights, as benchmarks/bench_wavlm.py builds it.
WAV=$D/exp/wavlm-base-plus-random
CHECK=check_train run_step wavlm-random "$MAN" "${SPK[@]}" pretrain "$MAN" -o "$WAV" --method none \
  --encoder wavlm-mhfa --encoder-opt size=base-plus --seed 0 --json
extract_all wavlm wavlm-base-plus-mhfa "$WAV" "$WMAN"

if [ "$COMPILE" = 1 ]; then
  CHECK=check_train run_step pretrain-cel-bf16-compile "$MAN" "${SPK[@]}" pretrain "$MAN" \
    -o "$D/exp/pretrain-cel-bf16-compile" --config examples/configs/cel-cpu.yaml "${ENC[@]}" --compile \
    --precision bf16 "${COMMON[@]}"
fi

# ==== BEGIN clustering at scale (issue 18 items 1-2) =====================================================
# A synthesised store of CLUSTER_N x 192 embeddings (default 1,092,009: VoxCeleb2, 5,994 speakers; written
# by benchmarks/scale.py's synth_store), clustered with --method two-stage to the seed's 50,000 then 7,500
# (scaled with N) on $DEVICE: its time, peak RSS and NMI against the true speakers. Then its first
# CLUSTER_SAMPLE rows (default 100,000) are clustered on $DEVICE and on the CPU and compared (NMI between
# the two labelings, at least 0.95). CUDA only: skipped on a CPU-only machine unless CLUSTER_SMOKE=1
# (then CLUSTER_N defaults to 20,000 and CLUSTER_SAMPLE to 5,000, the mechanics only).
if [ "$ON_CPU" = 1 ] && [ "${CLUSTER_SMOKE:-0}" != 1 ]; then
  for s in cluster-synth cluster-scale cluster-sample-device cluster-sample-cpu cluster-device-vs-cpu; do
    skip "$s" "the CUDA clustering check; CPU mode (CLUSTER_SMOKE=1 runs it small on the CPU)"
  done
else
  if [ "$ON_CPU" = 1 ]; then CN=${CLUSTER_N:-20000}; CS=${CLUSTER_SAMPLE:-5000}; else
    CN=${CLUSTER_N:-1092009}; CS=${CLUSTER_SAMPLE:-100000}; fi
  C=$D/cluster
  mkdir -p "$C"
  counts() { awk -v n="$1" 'BEGIN { m = int(50000 * n / 1092009 + 0.5); k = int(7500 * n / 1092009 + 0.5);
    printf "%d %d", (m < 2 ? 2 : m), (k < 2 ? 2 : k) }'; }
  read -r CM CK <<<"$(counts "$CN")"
  read -r SM SK <<<"$(counts "$CS")"
  CHECK=check_stdout run_step cluster-synth - "$PY" -c '
import sys, time
sys.path.insert(0, sys.argv[5])
import numpy as np
from scale import synth_store
from spkemb.embeddings.store import read_embeddings, write_embeddings
t = time.perf_counter()
n, k = int(sys.argv[2]), int(sys.argv[4])
synth_store(sys.argv[1], n)
e = read_embeddings(sys.argv[1])
pick = np.random.default_rng(0).choice(n, size=min(k, n), replace=False)
pick.sort()
write_embeddings(sys.argv[3], [e.ids[i] for i in pick], e.vectors[pick], speakers=[e.speakers[i] for i in pick])
print(f"{n} x {e.vectors.shape[1]} store and a {len(pick)}-row sample in {time.perf_counter() - t:.1f} s")' \
    "$C/emb.h5" "$CN" "$C/sample.h5" "$CS" "$ROOT/benchmarks"
  cluster_note() {  # the JSON summary of a cluster step as a note
    "$PY" -c 'import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
keys = ("n_embeddings", "kmeans_clusters", "n_clusters", "kmeans", "kmeans_device")
print("%s -> %s -> %s: %s k-means on %s" % tuple(s.get(k) for k in keys), end=", ")
print("%s AHC, %.1f s %s, NMI %.4f" % (s["options"]["ahc"], s["seconds"], s["stage_seconds"], s["nmi"]))' \
      "$WORK/logs/$1.out"
  }
  CDEV=$DEVICE
  CHECK=cluster_note run_step cluster-scale "$C/emb.h5" /usr/bin/env SPKEMB_LOG_INTERVAL=10 "${SPK[@]}" cluster \
    "$C/emb.h5" -o "$C/labels.tsv" --method two-stage --n-init-clusters "$CM" --n-clusters "$CK" --device "$CDEV" --json
  CHECK=cluster_note run_step cluster-sample-device "$C/sample.h5" "${SPK[@]}" cluster "$C/sample.h5" \
    -o "$C/sample-device.tsv" --method two-stage --n-init-clusters "$SM" --n-clusters "$SK" --device "$CDEV" --json
  CHECK=cluster_note run_step cluster-sample-cpu "$C/sample.h5" "${SPK[@]}" cluster "$C/sample.h5" \
    -o "$C/sample-cpu.tsv" --method two-stage --n-init-clusters "$SM" --n-clusters "$SK" --device cpu --json
  CHECK=check_stdout run_step cluster-device-vs-cpu "$C/sample-device.tsv:$C/sample-cpu.tsv" "$PY" -c '
import sys
from sklearn.metrics import normalized_mutual_info_score
from spkemb.data.labels import read_labels
a, b = read_labels(sys.argv[1]), read_labels(sys.argv[2])
ids = sorted(a)
v = normalized_mutual_info_score([a[i] for i in ids], [b[i] for i in ids])
print(f"NMI between the {sys.argv[3]} and the CPU labels of {len(ids)} embeddings: {v:.4f} (pass: >= 0.95)")
sys.exit(0 if v >= 0.95 else 1)' "$C/sample-device.tsv" "$C/sample-cpu.tsv" "$CDEV"
fi
# ==== END clustering at scale ============================================================================

# -- summary ---------------------------------------------------------------------------------------
TOTAL=$(since "$T0")
n_pass=$(awk -F'\t' '$2 == "PASS"' "$SUMMARY" | wc -l)
n_fail=$(awk -F'\t' '$2 == "FAIL"' "$SUMMARY" | wc -l)
n_skip=$(awk -F'\t' '$2 == "SKIP"' "$SUMMARY" | wc -l)
say ""
say "== summary ($DEVICE, $TOTAL s) =="
awk -F'\t' 'NR > 1 { printf "%-40s %-4s %6s %7s  %s\n", $1, $2, $3, $4, $5 }' "$SUMMARY" | tee -a "$LOG"
if [ "$(wc -l <"$XTSV")" -gt 1 ]; then
  say ""
  say "== extraction speed =="
  column -t -s $'\t' "$XTSV" 2>/dev/null | tee -a "$LOG" || tee -a "$LOG" <"$XTSV"
fi
say ""
say "gpu_check: $n_pass passed, $n_fail failed, $n_skip skipped in $TOTAL s (budget $BUDGET s); results in $RESULTS"

"$PY" - "$SUMMARY" "$XTSV" "$WORK/summary.json" "$DEVICE" "$TOTAL" <<'PY' 2>>"$LOG" || say "gpu_check: no summary.json"
import csv, json, sys
steps = list(csv.DictReader(open(sys.argv[1], encoding="utf-8"), delimiter="\t"))
extract = list(csv.DictReader(open(sys.argv[2], encoding="utf-8"), delimiter="\t"))
counts = {s: sum(r["status"] == s for r in steps) for s in ("PASS", "FAIL", "SKIP")}
json.dump({"device": sys.argv[4], "total_s": float(sys.argv[5]), "counts": counts, "steps": steps,
           "extract": extract}, open(sys.argv[3], "w", encoding="utf-8"), indent=1)
PY

# Logs, each run's config.yaml and metrics.jsonl, the stores' JSON into one tarball; results to RESULTS.
(cd "$WORK" && { printf '%s\n' ./logs ./helper.py; ls -d ./*.json ./*.tsv 2>/dev/null
  find exp -maxdepth 2 \( -name metrics.jsonl -o -name config.yaml -o -name classes.txt \); } \
  | sort -u | tar -czf logs.tar.gz -T - 2>/dev/null)
if [ "$RESULTS" != "$WORK" ]; then
  cp "$WORK/summary.tsv" "$WORK/extract.tsv" "$WORK/logs.tar.gz" "$RESULTS/" 2>/dev/null
  [ -f "$WORK/summary.json" ] && cp "$WORK/summary.json" "$RESULTS/"
fi
if [ "$KEEP" != 1 ]; then  # the weights are not the point: drop the big files
  rm -rf "$WORK"/exp/*/checkpoints "$WORK"/exp/*/encoder.pt "$WORK"/*.h5
  [ "$MADE_WORK" = 1 ] && [ "$RESULTS" != "$WORK" ] && rm -rf "$WORK"
fi
[ "$n_fail" = 0 ]
