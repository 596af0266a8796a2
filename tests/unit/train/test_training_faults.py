"""Issue 21 (trust, round 3), the training items: P fitted to the labels (make loop), inputs checked
before policies, a resume with other labels refused, a frozen encoder's batch norms held, -o checked
before loading, a random WavLM said out loud, and speed perturbation as new speakers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import one_line_error as _error
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.crops import CropDataset, collate_crops
from spkemb.data.manifest import read_manifest
from spkemb.data.synthetic import make_corpus
from spkemb.methods.supervised import Supervised, SupervisedOptions
from spkemb.models import build_encoder, load_encoder

runner = CliRunner()
TINY = ["--encoder-opt", "channels=16", "--encoder-opt", "mfa_channels=48", "--encoder-opt", "attention_channels=8"]
TINY += ["--encoder-opt", "se_channels=8", "--encoder-opt", "embed_dim=16"]
RUN = ["--max-steps", "3", "--batch-size", "6", "--device", "cpu", "--method-opt", "crop_seconds=0.5"]
SCRIPT = Path(__file__).parents[3] / "examples" / "pseudo_label_loop.sh"


# --- 1: P fitted to the labels ---------------------------------------------------------------------


def test_a_batch_asking_more_speakers_than_the_labels_have_fits_p(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "ft"
    r = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN, "--batch-size", "32"])
    assert r.exit_code == 0, r.output
    assert "asks for P=32 distinct speakers" in r.output and "P=6" in r.output
    assert (out / "encoder.pt").is_file()


@pytest.mark.slow
def test_the_make_loop_settings_run_at_tiny_size(tmp_path: Path) -> None:
    """The Makefile's loop target (cel, the script's default BATCH of 32) on a corpus with fewer speakers
    than P: it stopped with 'only 24 speakers for batches of P=32' after the pretraining."""
    make_corpus(tmp_path / "corpus", n_speakers=6, utts_per_speaker=6, seconds=(1.0, 1.5), sample_rate=16000, seed=0)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "ROUNDS": "1",
        "PRETRAIN_METHOD": "cel",
        "PRETRAIN_STEPS": "2",
        "FINETUNE_STEPS": "2",
        "PT_ARGS": "--encoder-opt channels=16 --encoder-opt mfa_channels=48 --method-opt crop_seconds=0.5",
        "FT_ARGS": "--method-opt crop_seconds=0.5",
        "TRIALS": "",
        "TEST": "",
    }
    env.pop("BATCH", None)
    subprocess.run(["spkemb", "prepare", str(tmp_path / "corpus"), "-o", str(tmp_path / "m.tsv")], env=env, check=True)
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "m.tsv"), str(tmp_path / "loop")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round 1: 6 clusters" in done.stdout
    assert (tmp_path / "loop" / "round1" / "exp" / "encoder.pt").is_file()


# --- 5: a bad choice is named before the policy on run length ----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "{m}", "-o", "{o}", "--method", "cell"], "unknown method 'cell'"),
        (["finetune", "{m}", "-o", "{o}", "--loss", "aam+supcon"], "loss: expected"),
        (["pretrain", "{m}", "-o", "{o}", "--method", "cel", "--method-opt", "bogus=1"], "unknown key 'bogus'"),
    ],
)
def test_a_bad_choice_is_named_before_the_missing_bound(
    tmp_path: Path, manifest: Path, args: list[str], message: str
) -> None:
    argv = [a.format(m=manifest, o=tmp_path / "x") for a in args]
    out = _error(runner.invoke(app, argv))
    assert message in out and "max_steps" not in out, out


# --- 12: a resume with other labels ------------------------------------------------------------------


def test_a_resume_with_other_labels_is_refused(tmp_path: Path, manifest: Path) -> None:
    utts = read_manifest(manifest)
    first, other = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("".join(f"{u.utt_id} c{i % 3}\n" for i, u in enumerate(utts)))
    other.write_text("".join(f"{u.utt_id} c{(i + 1) % 3}\n" for i, u in enumerate(utts)))  # same classes, moved
    out = tmp_path / "ft"
    base = ["finetune", str(manifest), "-o", str(out), *TINY, *RUN, "--batch-size", "3"]
    r = runner.invoke(app, [*base, "--labels", str(first)])
    assert r.exit_code == 0, r.output
    (out / "encoder.pt").unlink()  # as if interrupted after its last checkpoint
    classes = (out / "classes.txt").read_text()
    r = runner.invoke(app, [*base, "--max-steps", "5", "--labels", str(other), "--resume"])
    out_text = _error(r)
    assert "other labels" in out_text and f"{len(utts)} of {len(utts)} items" in out_text, out_text
    assert "--resume: the checkpoint" in out_text and "with --overwrite" in out_text and "`" not in out_text
    assert utts[0].utt_id in out_text
    assert (out / "classes.txt").read_text() == classes and not (out / "encoder.pt").exists()
    r = runner.invoke(app, [*base, "--max-steps", "5", "--labels", str(first), "--resume"])
    assert r.exit_code == 0, r.output


# --- 18: frozen batch norms, -o checks ----------------------------------------------------------------


def test_a_frozen_encoder_keeps_its_batch_norm_statistics() -> None:
    enc = build_encoder("ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8, embed_dim=16)
    before = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    method = Supervised(enc, SupervisedOptions(freeze_encoder_steps=5, crop_seconds=0.5), labels=[0, 1, 0, 1])
    method.train()
    method.on_step_start(0)
    batch = {"views": [torch.randn(4, 2, 8000)], "index": torch.arange(4)}
    method(batch)
    after = {k: v for k, v in enc.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    method.on_step_start(5)  # the encoder trains from here: its statistics move again
    method(batch)
    assert any(not torch.equal(before[k], enc.state_dict()[k]) for k in before)


def test_finetune_onto_its_own_init_is_refused(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "ft"
    assert runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN]).exit_code == 0
    stamp = (out / "encoder.pt").read_bytes()
    args = ["finetune", str(manifest), "-o", str(out), "--init", str(out), *RUN, "--overwrite"]
    assert "inside the -o folder" in _error(runner.invoke(app, args))
    assert (out / "encoder.pt").read_bytes() == stamp


def test_finetune_onto_a_file_is_refused_before_loading(tmp_path: Path, manifest: Path) -> None:
    before = manifest.read_bytes()
    out = _error(runner.invoke(app, ["finetune", str(manifest), "-o", str(manifest), *TINY, *RUN]))
    assert "must name an experiment folder" in out
    assert manifest.read_bytes() == before


# --- 6: a random WavLM is said out loud ----------------------------------------------------------------


def test_a_random_wavlm_frontend_is_warned_about(tmp_path: Path, manifest: Path) -> None:
    wavlm = ["--encoder", "wavlm-mhfa", "--encoder-opt", "size=base", "--encoder-opt", "layers=[0,1]"]
    wavlm += ["--encoder-opt", "heads=2", "--encoder-opt", "compression_dim=8", "--encoder-opt", "embed_dim=16"]
    r = runner.invoke(app, ["finetune", str(manifest), "-o", str(tmp_path / "w"), *wavlm, *RUN, "--max-steps", "1"])
    assert r.exit_code == 0, r.output
    assert "RANDOM" in r.output and "--frontend-weights" in r.output


# --- 10: speed perturbation as new speakers --------------------------------------------------------------


def test_each_speed_is_a_class_of_its_own(tmp_path: Path, manifest: Path) -> None:
    out = tmp_path / "ft"
    r = runner.invoke(app, ["finetune", str(manifest), "-o", str(out), *TINY, *RUN, "--method-opt", "n_crops=1"]
                      + ["--config", str(_speed_config(tmp_path))])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "18 classes for 6 speakers" in r.output
    assert "(--method-opt speed_as_speaker=false keeps" in r.output and "`" not in r.output  # the field as its flag
    ckpt = sorted((out / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)["method"]
    assert state["head.weight"].shape[0] == 18
    assert load_encoder(out / "encoder.pt").embed_dim == 16
    assert (out / "classes.txt").read_text().split() == [f"spk{i:03d}" for i in range(6)]
    off = ["--method-opt", "speed_as_speaker=false", "--config", str(_speed_config(tmp_path))]
    r = runner.invoke(app, ["finetune", str(manifest), "-o", str(tmp_path / "off"), *TINY, *RUN, *off])
    assert r.exit_code == 0 and "keeps its speaker's class" in r.output, r.output


def _speed_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "speed.yaml"
    cfg.write_text("data_options: {speed: true}\n")
    return cfg


def test_the_speed_class_travels_with_the_batch(manifest: Path) -> None:
    from spkemb.augment.chain import Augmenter
    from spkemb.augment.speed import SpeedPerturb

    utts = read_manifest(manifest)[:6]
    ds = CropDataset(utts, 16000, [(1, 0.5)], Augmenter([SpeedPerturb((0.9, 1.0, 1.1))], [1.0]), seed=0)
    assert ds.speed_factors == (1.0, 0.9, 1.1)
    batch = collate_crops([ds[i] for i in range(len(utts))])
    assert batch["speed"].shape == (6,) and set(batch["speed"].tolist()) <= {0, 1, 2}
    enc = build_encoder("ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8, embed_dim=16)
    method = Supervised(enc, SupervisedOptions(n_crops=1, speed_variants=3, crop_seconds=0.5), labels=np.arange(6) % 2)
    assert method.head.weight.shape[0] == 6  # 2 speakers x 3 speeds
    loss, _ = method(batch)
    assert torch.isfinite(loss)
