"""average-model: the mean of N checkpoints' encoder weights; other configs and bad files refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.models import build_encoder, load_encoder, save_encoder
from spkemb.train.checkpoint import save_checkpoint

runner = CliRunner()


def _run(tmp_path: Path, n: int, channels: int = 16, name: str = "run") -> tuple[Path, list[dict[str, torch.Tensor]]]:
    """A run folder with ``n`` checkpoints in the trainer's layout (the method's state holds encoder.*)."""
    run = tmp_path / name
    states = []
    for i in range(n):
        torch.manual_seed(i)
        enc = build_encoder("ecapa", channels=channels)
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.num_batches_tracked.fill_(100 * (i + 1))
        state = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
        state["head.weight"] = torch.randn(3, 4)
        config = {"method": "supervised", "encoder": "ecapa", "encoder_kwargs": {"channels": channels}}
        ckpt = {"format": 1, "step": 10 * (i + 1), "method": state, "optimizer": {}, "sampler": {}, "config": config}
        save_checkpoint(ckpt, run / "checkpoints", 10 * (i + 1), keep=10)
        states.append(enc.state_dict())
    return run, states


def test_average_of_the_last_n_is_the_mean_of_their_weights(tmp_path: Path) -> None:
    run, states = _run(tmp_path, 4)
    out = tmp_path / "avg.pt"
    res = runner.invoke(app, ["average-model", str(run), "--last", "3", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "steps 20, 30, 40" in res.output
    avg = load_encoder(out).state_dict()
    last = states[1:]
    for k, v in avg.items():
        if v.is_floating_point():
            want = torch.stack([s[k].double() for s in last]).mean(0).to(v.dtype)
            assert torch.allclose(v, want, atol=1e-7), k
        else:  # num_batches_tracked: the newest checkpoint's counter
            assert torch.equal(v, last[-1][k]), k
    assert load_encoder(out).extra["averaged"]["steps"] == [20, 30, 40]


def test_a_list_of_files_and_encoder_files_average_too(tmp_path: Path) -> None:
    files = []
    weights = []
    for i in range(2):
        torch.manual_seed(i)
        enc = build_encoder("ecapa", channels=16)
        files.append(save_encoder(enc, tmp_path / f"e{i}.pt"))
        weights.append(enc.state_dict())
    out = tmp_path / "avg.pt"
    res = runner.invoke(app, ["average-model", *map(str, files), "-o", str(out)])
    assert res.exit_code == 0, res.output
    k = "blocks.0.conv.weight" if "blocks.0.conv.weight" in weights[0] else next(iter(weights[0]))
    assert torch.allclose(load_encoder(out).state_dict()[k], (weights[0][k] + weights[1][k]) / 2)


def test_refusals_are_one_line_exit_2_and_keep_the_output(tmp_path: Path) -> None:
    run, _ = _run(tmp_path, 2)
    other, _ = _run(tmp_path, 1, channels=8, name="other")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "keep.pt"
    out.write_bytes(b"existing")
    ckpts = sorted((run / "checkpoints").glob("step-*.pt"))
    cases = {
        "other config": [str(ckpts[0]), str(next((other / "checkpoints").glob("*.pt")))],
        "too many": [str(run), "--last", "5"],
        "junk": [str(ckpts[0]), str(junk)],
        "missing": [str(ckpts[0]), str(tmp_path / "nowhere.pt")],
        "empty run": [str(tmp_path)],
        "--last with files": [str(ckpts[0]), str(ckpts[1]), "--last", "1"],
    }
    for what, args in cases.items():
        res = runner.invoke(app, ["average-model", *args, "-o", str(out), "--overwrite"])
        assert res.exit_code == 2, (what, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output, (what, res.output)
        assert out.read_bytes() == b"existing", what
    res = runner.invoke(app, ["average-model", str(run), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output


@pytest.mark.parametrize("flag", ["--last"])
def test_last_must_be_positive(tmp_path: Path, flag: str) -> None:
    run, _ = _run(tmp_path, 1)
    res = runner.invoke(app, ["average-model", str(run), flag, "0", "-o", str(tmp_path / "a.pt")])
    assert res.exit_code == 2
