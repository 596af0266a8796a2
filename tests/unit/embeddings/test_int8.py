"""``extract --precision int8``: dynamic int8 through onnxruntime on the CPU, refused elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spkemb.errors import InputError
from spkemb.models import build_encoder
from spkemb.utils.runtime import check_precision

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_tiny_ecapa_int8_follows_fp32() -> None:
    from spkemb.embeddings.quantize import quantize_int8

    torch.manual_seed(0)
    model = build_encoder("ecapa", channels=32).eval()
    q = quantize_int8(model, threads=1)
    g = torch.Generator().manual_seed(1)
    wav = 0.1 * torch.randn(3, 32000, generator=g)
    lengths = torch.tensor([32000, 24000, 12000])
    with torch.inference_mode():
        a, b = model(wav, lengths).numpy(), q(wav, lengths).numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99
    assert np.abs(a - b).max() > 0  # it really is another graph, not the float one
    assert q.config["runtime"] == "onnxruntime-int8"


def test_int8_refused_on_cuda_and_in_training() -> None:
    from spkemb.utils.choices import EXTRACT_PRECISIONS

    assert check_precision("int8", torch.device("cpu"), EXTRACT_PRECISIONS) is None
    with pytest.raises(InputError, match="int8 runs on the CPU only"):
        check_precision("int8", torch.device("cuda", 0), EXTRACT_PRECISIONS)
    with pytest.raises(InputError, match="choose fp32, bf16, fp16$"):
        check_precision("int8", torch.device("cpu"))  # training's choices


class _FakeWavLM(nn.Module):
    config = {"name": "wavlm-mhfa"}
    sample_rate, embed_dim = 16000, 4


def test_int8_refuses_wavlm_in_one_line() -> None:
    from spkemb.embeddings.quantize import quantize_int8

    with pytest.raises(InputError) as err:
        quantize_int8(_FakeWavLM())
    assert "does not support encoder wavlm-mhfa" in str(err.value) and "\n" not in str(err.value)


def test_cli_extract_int8_store_follows_fp32(tiny_corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spkemb.cli.app import app
    from spkemb.embeddings.store import read_embeddings
    from spkemb.models import save_encoder

    runner = CliRunner()
    manifest = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(manifest)]).exit_code == 0
    torch.manual_seed(0)
    enc = save_encoder(build_encoder("ecapa", channels=32), tmp_path / "encoder.pt")
    stores = {}
    for prec in ("fp32", "int8"):
        out = tmp_path / f"{prec}.h5"
        args = ["extract", str(enc), str(manifest), "-o", str(out), "--precision", prec, "--device", "cpu"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        stores[prec] = read_embeddings(out)
    f, q = stores["fp32"].vectors, stores["int8"].vectors
    assert stores["int8"].ids == stores["fp32"].ids
    assert json.loads(stores["int8"].attrs["options"])["precision"] == "int8"
    cos = (f * q).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(q, axis=1)
    assert cos.min() >= 0.99 and not np.array_equal(f, q)


def test_cli_int8_on_cuda_is_one_line_exit_2(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from spkemb.cli.app import app

    runner = CliRunner()
    manifest = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(manifest)]).exit_code == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    res = runner.invoke(
        app,
        [
            "extract",
            "mfcc-stats",
            str(manifest),
            "-o",
            str(tmp_path / "e.h5"),
            "--precision",
            "int8",
            "--device",
            "cuda:0",
        ],
    )
    assert res.exit_code == 2, res.output
    assert "int8 runs on the CPU only" in res.output
    assert not (tmp_path / "e.h5").exists()


@pytest.mark.parametrize("vnni", [False, True])
def test_weights_take_seven_bits_without_vnni(monkeypatch: pytest.MonkeyPatch, vnni: bool) -> None:
    """Without VNNI onnxruntime's u8 x s8 products saturate in int16 (a random ECAPA C=512 fell to
    cosine 0.90 on an AVX2-only CPU): the weights are quantised with reduce_range there, only there."""
    import onnxruntime.quantization as ortq

    from spkemb.embeddings.quantize import quantize_int8
    from spkemb.utils import runtime

    seen: list[bool] = []
    kept: list[str] = []
    real = ortq.quantize_dynamic

    def spy(*args: object, **kwargs: object) -> None:
        seen.append(bool(kwargs.get("reduce_range")))
        kept.extend(kwargs.get("nodes_to_exclude") or [])  # type: ignore[call-overload]
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ortq, "quantize_dynamic", spy)
    monkeypatch.setattr(runtime, "cpu_has_vnni", lambda: vnni)
    torch.manual_seed(0)
    try:
        quantize_int8(build_encoder("ecapa", channels=32).eval(), threads=1)
    except InputError:
        if not vnni:
            raise
        # (forced "VNNI" on a CPU without it: the 8-bit graph may saturate and the guard refuse it)
    assert seen == [not vnni]
    # the front-end and the first layer after it (ECAPA's layer1, reading the fbank) stay float
    assert any("frontend" in k for k in kept) and [k for k in kept if "frontend" not in k] == ["/encoder/layer1/MatMul"]
