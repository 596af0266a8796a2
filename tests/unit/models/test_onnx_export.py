"""export-model --onnx: onnxruntime follows torch (2 lengths, a padded batch); extract MODEL.onnx = extract .pt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.embeddings.store import read_embeddings
from spkemb.models import build_encoder, save_encoder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    enc = save_encoder(build_encoder("ecapa", channels=16), d / "encoder.pt")
    res = runner.invoke(app, ["export-model", str(enc), "--onnx", str(d / "model.onnx"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "min cosine" in res.output
    return enc, d / "model.onnx"


def test_onnxruntime_equals_torch_on_two_lengths_and_a_padded_batch(exported: tuple[Path, Path]) -> None:
    from spkemb.embeddings.onnx_runner import session
    from spkemb.models import load_encoder

    enc_path, onnx_path = exported
    enc = load_encoder(enc_path)
    sess = session(onnx_path, 1)
    assert [i.name for i in sess.get_inputs()] == ["waveform", "lengths"]
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    g = torch.Generator().manual_seed(3)
    for n in (16000, 40000):  # one row of each length
        wav = 0.1 * torch.randn(1, n, generator=g)
        lengths = torch.tensor([n])
        with torch.no_grad():
            want = enc(wav, lengths).numpy()
        got = sess.run(None, {"waveform": wav.numpy(), "lengths": lengths.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    wav = torch.zeros(2, 30000)  # batch 2 with padding
    wav[0] = 0.1 * torch.randn(30000, generator=g)
    wav[1, :12000] = 0.1 * torch.randn(12000, generator=g)
    lengths = torch.tensor([30000, 12000])
    with torch.no_grad():
        want = enc(wav, lengths).numpy()
    got = sess.run(None, {"waveform": wav.numpy(), "lengths": lengths.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_extract_onnx_equals_extract_pt(exported: tuple[Path, Path], tiny_corpus: Path, tmp_path: Path) -> None:
    enc_path, onnx_path = exported
    manifest = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(manifest)]).exit_code == 0
    outs = {}
    for name, model in (("pt", enc_path), ("onnx", onnx_path)):
        outs[name] = tmp_path / f"{name}.h5"
        res = runner.invoke(app, ["extract", str(model), str(manifest), "-o", str(outs[name]), "--workers", "0"])
        assert res.exit_code == 0, res.output
    a, b = read_embeddings(outs["pt"]), read_embeddings(outs["onnx"])
    assert a.ids == b.ids and a.attrs["encoder"] == b.attrs["encoder"] == "ecapa"
    np.testing.assert_allclose(b.vectors, a.vectors, rtol=1e-4, atol=1e-4)
    res = runner.invoke(
        app, ["extract", str(onnx_path), str(manifest), "-o", str(tmp_path / "bf.h5"), "--precision", "bf16"]
    )
    assert res.exit_code == 2 and "fp32" in res.output and len(res.output.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_exit_2_and_keep_the_output(
    exported: tuple[Path, Path], tiny_corpus: Path, tmp_path: Path
) -> None:
    enc_path, _ = exported
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"existing")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    for args in ([str(junk)], [str(tmp_path / "nowhere.pt")], ["mfcc-stats"], [str(enc_path), "--opset", "9"]):
        res = runner.invoke(app, ["export-model", *args, "--onnx", str(out), "--overwrite"])
        assert res.exit_code == 2, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert out.read_bytes() == b"existing"
    res = runner.invoke(app, ["export-model", str(enc_path), "--onnx", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    manifest = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(manifest)]).exit_code == 0
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not onnx")
    res = runner.invoke(app, ["extract", str(fake), str(manifest), "-o", str(tmp_path / "e.h5")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert not list(tmp_path.glob(".*tmp*"))


def test_without_onnxruntime_the_commands_say_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else real(name, *a)
    )
    res = runner.invoke(app, ["export-model", "x.pt", "--onnx", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "pip install 'spkemb[onnx]'" in res.output


@pytest.mark.parametrize(
    ("name", "kwargs", "front_end"),
    [
        ("campplus", {"embed_dim": 16, "block_layers": (1, 1, 1)}, "Kaldi fbank"),
        ("wespeaker-resnet", {"embed_dim": 16, "m_channels": 4, "layers": (1, 1, 1, 1)}, "Kaldi fbank"),
        ("eres2net", {"embed_dim": 16, "m_channels": 4, "layers": (1, 1, 1, 1)}, "Kaldi fbank"),
    ],
)  # fmt: skip
def test_imported_front_ends_are_refused_in_one_line(
    name: str, kwargs: dict[str, object], front_end: str, tmp_path: Path
) -> None:
    enc = save_encoder(build_encoder(name, **kwargs), tmp_path / f"{name}.pt")
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export-model", str(enc), "--onnx", str(out), "--threads", "1"])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and front_end in res.output and str(enc) in res.output
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_speechbrain_ecapa_exports_with_its_centred_stft(tmp_path: Path) -> None:
    from spkemb.embeddings.onnx_runner import session

    torch.manual_seed(0)
    enc = build_encoder("speechbrain-ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8,
                        embed_dim=16)  # fmt: skip
    enc.emb_mean.normal_()  # an imported mean_var_norm_emb: subtracted inside the graph too
    path = save_encoder(enc, tmp_path / "sb.pt")
    res = runner.invoke(app, ["export-model", str(path), "--onnx", str(tmp_path / "sb.onnx"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    sess = session(tmp_path / "sb.onnx", 1)
    g = torch.Generator().manual_seed(4)
    wav = torch.zeros(2, 20000)
    wav[0] = 0.1 * torch.randn(20000, generator=g)
    wav[1, :9000] = 0.1 * torch.randn(9000, generator=g)
    for w, n in ((wav[:1, :12345], [12345]), (wav, [20000, 9000])):  # one unpadded row; a padded batch
        lengths = torch.tensor(n)
        with torch.no_grad():
            want = enc.eval()(w, lengths).numpy()
        got = sess.run(None, {"waveform": w.contiguous().numpy(), "lengths": lengths.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
