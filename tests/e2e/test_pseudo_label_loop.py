"""examples/pseudo_label_loop.sh end to end on a tiny synthetic corpus: every stage runs, rounds
print their line, and a rerun redoes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spkemb.data.synthetic import make_corpus

SCRIPT = Path(__file__).parents[2] / "examples" / "pseudo_label_loop.sh"


@pytest.mark.slow
def test_pseudo_label_loop_runs_and_resumes(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus", n_speakers=4, utts_per_speaker=3, seconds=(1.5, 2.0), sample_rate=16000, seed=0)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "ROUNDS": "1",
        "PRETRAIN_METHOD": "cel",
        "PRETRAIN_STEPS": "2",
        "FINETUNE_STEPS": "2",
        "BATCH": "4",
        "PT_ARGS": "--encoder-opt channels=16 --encoder-opt mfa_channels=48 --method-opt crop_seconds=0.5",
        "FT_ARGS": "--method-opt crop_seconds=0.5",
        "TRIALS": "",
        "TEST": "",
    }
    subprocess.run(
        ["spkemb", "prepare", str(tmp_path / "corpus"), "-o", str(tmp_path / "m.tsv")],
        env=env,
        check=True,
        capture_output=True,
    )
    first = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "m.tsv"), str(tmp_path / "loop")], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "round 0 (cel)" in first.stdout and "round 1: 4 clusters, NMI" in first.stdout
    assert (tmp_path / "loop" / "round1" / "exp" / "encoder.pt").is_file()
    labels = (tmp_path / "loop" / "round1" / "labels.txt").read_text().splitlines()
    assert len(labels) == 12
    stamp = (tmp_path / "loop" / "round1" / "exp" / "encoder.pt").stat().st_mtime_ns
    again = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "m.tsv"), str(tmp_path / "loop")], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "round 1: 4 clusters" in again.stdout
    assert (tmp_path / "loop" / "round1" / "exp" / "encoder.pt").stat().st_mtime_ns == stamp  # not redone
    # A failed scoring step (a malformed trial list) stops the script and leaves no score.json that a
    # rerun would take for a finished step.
    (tmp_path / "bad-trials.txt").write_text("1 only-two-fields\n")
    bad = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "m.tsv"), str(tmp_path / "loop")],
        env={**env, "TRIALS": str(tmp_path / "bad-trials.txt"), "TEST": str(tmp_path / "m.tsv")},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "not in the embedding store" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr  # it stops at the failed step
    assert not (tmp_path / "loop" / "round0" / "score.json").exists()
