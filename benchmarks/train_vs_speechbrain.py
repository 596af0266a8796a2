"""One training step of spkemb against the same step in SpeechBrain 1.1.2, side by side in one run.

    python benchmarks/bench_train.py --vs-speechbrain [--steps 6] [--warmup 2] [--tasks aam cel]
        [--precisions fp32 bf16] [--peer-python PY] [--no-peer-allocator]

ECAPA-TDNN C=512 (192-d), 2 threads, the same synthetic audio tensors fed to both sides (saved once,
``torch.load``-ed by each), the front-end inside the step on both sides (spkemb's Fbank, in its
ECAPA's forward; SpeechBrain's ``Fbank`` + ``InputNormalization``, as its VoxCeleb recipe), no data
loading or augmentation on either side. A step is forward + loss + backward + AdamW step (lr 1e-3,
no gradient clipping), fp32 or under bf16 autocast.

* ``aam`` (finetune): 64 x 2-s crops, 5,994 classes; spkemb's Trainer step of ``finetune --loss
  aam`` (margin 0.2, scale 30, n_crops 1) against SpeechBrain's ``ECAPA_TDNN`` + ``Classifier`` +
  ``LogSoftmaxWrapper(AdditiveAngularMargin(0.2, 30))``.
* ``cel`` (pretrain): 64 utterances x 2 crops of 2 s (128 crops through the encoder); spkemb's
  Trainer step of ``pretrain --method cel`` against SpeechBrain's ECAPA forward/backward plus the CEL
  loss written in ``peer_train_step.py`` (SpeechBrain has none): what is held fixed is the encoder
  architecture and size, the crops, the loss's maths, the optimiser and the precision.

Each side is a separate long-lived process (spkemb's from this interpreter, SpeechBrain's from its
venv), set up and warmed up once; then the timed steps alternate between the sides one at a time
(the order rotating every round), so all see the same machine load. SpeechBrain runs twice: with
glibc's default allocator (as it runs out of the box) and with the allocator setting spkemb's CLI
applies on the CPU (``spkemb.utils.runtime.tune_cpu_allocator``), so that the ratio against the latter
holds the allocator fixed. The median step seconds of each side are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "peer_train_step.py"
PEER_VENV = Path(os.environ.get("SPKEMB_SB_TRAIN_VENV", "/work/venvs/sbtrain"))
PEER_PINS = ["speechbrain==1.1.2", "torch==2.14.1", "torchaudio==2.11.0"]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
BATCH, SECONDS, N_CLASSES, SAMPLE_RATE = 64, 2.0, 5994, 16000


def cpu_line() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(have) or 'none of ' + ' '.join(FLAGS)}"


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def peer_python(given: str | None) -> str | None:
    """SpeechBrain's interpreter: ``given``, else the venv (installed when absent); None if impossible."""
    if given:
        return given
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        print(f"installing SpeechBrain into {PEER_VENV} ({' '.join(PEER_PINS)})", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
        except (OSError, subprocess.CalledProcessError) as err:
            print(f"skipped: cannot install SpeechBrain into {PEER_VENV}: {err}", file=sys.stderr)
            return None
    probe = subprocess.run([str(py), "-c", "import speechbrain; print(speechbrain.__version__)"], capture_output=True)
    if probe.returncode != 0:
        print(f"skipped: {py} cannot import speechbrain", file=sys.stderr)
        return None
    return str(py)


def make_data(task: str, path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    n = int(SECONDS * SAMPLE_RATE)
    shape = (BATCH, n) if task == "aam" else (BATCH, 2, n)
    wav = 0.1 * torch.randn(shape, generator=g)
    labels = torch.randint(0, N_CLASSES, (BATCH,), generator=g)
    torch.save({"wav": wav, "labels": labels, "n_classes": N_CLASSES}, path)


def spkemb_worker(task: str, precision: str, data_path: str, channels: int, threads: int) -> None:
    """spkemb's side: the real Trainer's step (``Trainer._forward_backward``) on the saved batch."""
    from spkemb.methods import build_method
    from spkemb.methods.supervised import Supervised, SupervisedOptions
    from spkemb.models.registry import build_encoder
    from spkemb.train.config import TrainConfig
    from spkemb.train.trainer import Trainer
    from spkemb.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as `spkemb pretrain` / `finetune` do on the CPU
    torch.set_num_threads(threads)
    data = torch.load(data_path, weights_only=True)
    wav, labels = data["wav"], data["labels"]
    encoder = build_encoder("ecapa", channels=channels, mfa_channels=3 * channels)  # as SpeechBrain: 3C
    if task == "aam":
        opts = SupervisedOptions(loss="aam", n_classes=int(data["n_classes"]), n_crops=1, crop_seconds=SECONDS)
        method = Supervised(encoder, opts, labels=labels)
        batch = {"views": [wav[:, None]], "index": torch.arange(BATCH)}
        name = "supervised"
    else:
        method = build_method("cel", encoder)
        batch = {"views": [wav], "index": torch.arange(BATCH)}
        name = "cel"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(method=name, batch_size=BATCH, precision=precision, device="cpu", max_steps=10**6)  # type: ignore[arg-type]
        trainer = Trainer(method, list(range(BATCH)), None, cfg, tmp)
        trainer._setup(False)

        def step() -> float:
            t0 = time.perf_counter()
            trainer._forward_backward(batch, cfg.lr)
            return time.perf_counter() - t0

        print("ready", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "quit":
                break
            print(json.dumps([step() for _ in range(int(cmd))]), flush=True)
        if trainer.metrics is not None:
            trainer.metrics.close()


class Side:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        self.times: list[float] = []

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the process ended (exit {self.proc.wait()})")
        return line.strip()

    def wait_ready(self) -> None:
        while self._read() != "ready":
            pass

    def run(self, n: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return list(json.loads(self._read()))

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait()


def compare(task: str, precision: str, peer: str, a: argparse.Namespace, data: Path) -> dict:
    common = [task, precision, str(data), "--channels", str(a.channels), "--threads", str(a.threads)]
    argv = {"spkemb": [sys.executable, str(Path(__file__)), "--worker", *common]}
    argv["speechbrain"] = [peer, str(PEER_SCRIPT), *common]
    if a.peer_allocator:
        argv["speechbrain+alloc"] = [peer, str(PEER_SCRIPT), *common, "--tune-allocator"]
    sides = []
    try:
        for name, cmd in argv.items():  # set up one at a time: memory, and no mutual slow-down of set-up
            side = Side(name, cmd)
            sides.append(side)
            side.wait_ready()
            side.run(a.warmup)
        for r in range(a.steps):
            for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                side.times += side.run(1)
    finally:
        for side in sides:
            side.close()
    crops = BATCH * (1 if task == "aam" else 2)
    out: dict = {"crops_per_step": crops}
    for side in sides:
        med = statistics.median(side.times)
        out[side.name] = {
            "median_s": round(med, 3),
            "min_s": round(min(side.times), 3),
            "crops_per_s": round(crops / med, 1),
            "steps_s": [round(t, 3) for t in side.times],
        }
    for name in argv:
        if name != "spkemb":
            out[f"spkemb_speedup_vs_{name}"] = round(out[name]["median_s"] / out["spkemb"]["median_s"], 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["aam", "cel"], choices=["aam", "cel"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-python", help="SpeechBrain 1.1.2's interpreter (default: its venv, installed if absent)")
    ap.add_argument("--no-peer-allocator", dest="peer_allocator", action="store_false",
                    help="skip the SpeechBrain run with spkemb's allocator setting")  # fmt: skip
    ap.add_argument("--worker", nargs=3, metavar=("TASK", "PRECISION", "DATA"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        spkemb_worker(*a.worker, a.channels, a.threads)
        return
    print(f"CPU: {cpu_line()}", file=sys.stderr)
    print(f"torch {torch.__version__}, {a.threads} threads; before: {load_line()}", file=sys.stderr)
    peer = peer_python(a.peer_python)
    if peer is None:
        print(json.dumps({"skipped": "no SpeechBrain interpreter"}))
        return
    result: dict = {"cpu": cpu_line(), "torch": torch.__version__, "threads": a.threads, "load_before": load_line()}
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            data = Path(tmp) / f"{task}.pt"
            make_data(task, data)
            for precision in a.precisions:
                t0 = time.perf_counter()
                r = result[f"{task}-{precision}"] = compare(task, precision, peer, a, data)
                sides = ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in r.items() if isinstance(v, dict))
                print(f"{task} {precision}: {sides} ({time.perf_counter() - t0:.0f} s); {load_line()}", file=sys.stderr)
    result["load_after"] = load_line()
    print(f"after: {result['load_after']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
