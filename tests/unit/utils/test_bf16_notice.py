"""bf16 on a CPU without bf16 instructions: extract and the training commands say it runs emulated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.models import build_encoder, save_encoder
from spkemb.utils import runtime
from spkemb.utils.runtime import emulated_bf16

runner = CliRunner()
TINY_ECAPA = {"channels": 16, "mfa_channels": 48, "attention_channels": 8, "se_channels": 8, "embed_dim": 16}


def cpu_with_bf16(monkeypatch: pytest.MonkeyPatch, has: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has)


def test_notice_only_for_bf16_on_a_cpu_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_with_bf16(monkeypatch, False)
    note = emulated_bf16("bf16", torch.device("cpu"))
    assert note is not None and "emulated" in note and "`precision` fp32" in note
    assert emulated_bf16("fp32", torch.device("cpu")) is None
    assert emulated_bf16("bf16", torch.device("cuda", 0)) is None
    cpu_with_bf16(monkeypatch, True)
    assert emulated_bf16("bf16", torch.device("cpu")) is None


def test_cpu_probe_matches_the_cpu_flags() -> None:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    assert runtime.cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize("has", [False, True])
def test_extract_says_so_on_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, manifest: Path, has: bool) -> None:
    cpu_with_bf16(monkeypatch, has)
    torch.manual_seed(0)
    model = tmp_path / "encoder.pt"
    save_encoder(build_encoder("ecapa", **TINY_ECAPA), model)
    args = ["extract", str(model), str(manifest), "-o", str(tmp_path / "e.h5"), "--precision", "bf16"]
    res = runner.invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    said = "--precision bf16 on this CPU" in res.output and "use --precision fp32 here" in res.output
    assert said is not has


def test_finetune_warns_on_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, manifest: Path) -> None:
    cpu_with_bf16(monkeypatch, False)
    opts = [x for k, v in TINY_ECAPA.items() for x in ("--encoder-opt", f"{k}={v}")]
    res = runner.invoke(
        app,
        ["finetune", str(manifest), "-o", str(tmp_path / "ft"), *opts, "--max-steps", "1", "--batch-size", "6"]
        + ["--device", "cpu", "--precision", "bf16", "--method-opt", "crop_seconds=0.5"],
    )
    assert res.exit_code == 0, res.output
    assert "warning: --precision bf16 on this CPU" in " ".join(res.output.split())


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from spkemb.train.config import TrainConfig
    from spkemb.utils.runtime import resolve_precision

    cpu = torch.device("cpu")
    for has, expect in ((False, "fp32"), (True, "bf16")):
        cpu_with_bf16(monkeypatch, has)
        assert resolve_precision("auto", cpu) == expect
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert TrainConfig(precision="auto", max_steps=1).precision == "auto"
    with pytest.raises(Exception, match="precision"):
        TrainConfig(precision="int8", max_steps=1)  # type: ignore[arg-type]


def test_finetune_with_auto_runs_fp32_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, manifest: Path
) -> None:
    """The CPU configs say ``precision: auto``: on a CPU without bf16 they train in fp32, silently."""
    import json

    cpu_with_bf16(monkeypatch, False)
    opts = [x for k, v in TINY_ECAPA.items() for x in ("--encoder-opt", f"{k}={v}")]
    res = runner.invoke(
        app,
        ["finetune", str(manifest), "-o", str(tmp_path / "ft"), *opts, "--max-steps", "1", "--batch-size", "6"]
        + ["--device", "cpu", "--precision", "auto", "--method-opt", "crop_seconds=0.5", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert "emulated" not in res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "fp32"
