import math
import zipfile

import pytest
import torch
import torch.nn.functional as F

from spkemb.errors import InputError
from spkemb.models import build_encoder, describe_encoder, file_sha256, list_encoders, load_encoder, save_encoder

SMALL = {
    "ecapa": {"channels": 32, "mfa_channels": 48, "attention_channels": 8, "se_channels": 8, "scale": 4,
              "embed_dim": 16, "n_mels": 40},
    "resnet34": {"base_channels": 4, "embed_dim": 16, "n_mels": 40, "layers": [1, 2, 1, 1]},
    "tdnn": {"channels": 32, "stats_channels": 48, "embed_dim": 16, "n_mels": 40},
    "mfcc-stats": {},
}  # fmt: skip


def _speechlike(n: int, sr: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    f0 = 120 + 40 * seed
    x = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.2 * x * env + 0.02 * torch.randn(n, generator=g)


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial running statistics, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def _build(name: str, sr: int = 16000) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_encoder(name, sample_rate=sr, **SMALL[name])
    _randomise_bn(model)
    return model.eval()


def test_registry_names_and_errors():
    assert set(list_encoders()) >= {"ecapa", "resnet34", "tdnn", "mfcc-stats"}
    with pytest.raises(InputError, match="known: .*ecapa.*mfcc-stats"):
        build_encoder("nope")
    with pytest.raises(InputError, match="channelz"):
        build_encoder("ecapa", channelz=3)


@pytest.mark.parametrize("sr", [16000, 8000])
@pytest.mark.parametrize("name", ["ecapa", "resnet34", "tdnn", "mfcc-stats"])
def test_encoder_shape_and_config(name, sr):
    model = _build(name, sr)
    assert model.sample_rate == sr
    assert model.config["name"] == name and model.config["sample_rate"] == sr
    wav = torch.stack([_speechlike(sr, sr, 0), _speechlike(sr, sr, 1)])
    with torch.no_grad():
        emb = model(wav)
    expected = SMALL[name].get("embed_dim", 60)
    assert model.embed_dim == expected
    assert emb.shape == (2, expected) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    rebuilt = build_encoder(**model.config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["ecapa", "resnet34", "tdnn", "mfcc-stats"])
def test_masked_pooling_padded_batch_matches_single(name):
    sr = 16000
    model = _build(name)
    lens = [16000, 7000, 11111]
    singles = [_speechlike(k, sr, i) for i, k in enumerate(lens)]
    wav = torch.zeros(3, max(lens))
    for i, x in enumerate(singles):
        wav[i, : len(x)] = x
    with torch.no_grad():
        batch = model(wav, torch.tensor(lens))
        for i, x in enumerate(singles):
            one = model(x[None])[0]
            assert F.cosine_similarity(batch[i], one, dim=0) > 0.99
            torch.testing.assert_close(batch[i], one, atol=1e-3, rtol=1e-3)
        # The padding really matters: without lengths the short utterance changes.
        unmasked = model(wav)
    assert not torch.allclose(unmasked[1], batch[1], atol=1e-3)


def test_paper_sized_encoders_parameter_counts():
    # ECAPA-TDNN (C=512) has about 6.2 M parameters in the paper, C=1024 about 14.7 M.
    n512 = describe_encoder(build_encoder("ecapa"))["parameters"]
    assert 5.8e6 < n512 < 6.6e6
    big = build_encoder("ecapa", channels=1024)
    assert big.config["mfa_channels"] == 1536 and 14e6 < describe_encoder(big)["parameters"] < 15.4e6
    d = describe_encoder(build_encoder("resnet34"))
    assert d["embed_dim"] == 256 and 6e6 < d["parameters"] < 7.5e6
    assert build_encoder("tdnn").embed_dim == 512
    assert describe_encoder(build_encoder("mfcc-stats"))["parameters"] == 0


def test_ecapa_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = build_encoder("ecapa", channels=64, mfa_channels=192, attention_channels=16, se_channels=16)
    _randomise_bn(model)
    model.eval()
    wav = torch.stack([_speechlike(24000, 16000, 0), _speechlike(24000, 16000, 1)])
    lens = torch.tensor([24000, 15000])
    with torch.no_grad():
        ref = model(wav, lens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(wav, lens)
    assert F.cosine_similarity(ref, low.float(), dim=1).min() > 0.999


def test_ecapa_inference_path_matches_autograd_path():
    # Without gradients ECAPA takes faster routes (oneDNN linear, in-place BatchNorm); same maths.
    model = _build("ecapa")
    wav = torch.stack([_speechlike(12000, 16000, 0), _speechlike(12000, 16000, 1)])
    lens = torch.tensor([12000, 9000])
    with torch.no_grad():
        fast = model(wav, lens)
    slow = model(wav, lens).detach()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_ecapa_dense_layer_is_a_dilated_conv():
    from spkemb.models.ecapa import _Dense

    torch.manual_seed(0)
    layer = _Dense(6, 5, kernel=3, dilation=2).eval()
    x = torch.randn(2, 11, 6)
    # Tap j of the linear weight is the conv kernel's position j.
    w = layer.linear.weight.view(5, 3, 6).permute(0, 2, 1)  # (out, in, k)
    ref = torch.relu(F.conv1d(x.transpose(1, 2), w, layer.linear.bias, padding=2, dilation=2))
    ref = layer.bn(ref).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


def test_ecapa_dense_layer_trains_as_a_dilated_conv():
    # With gradients, fp32 CPU products go through oneDNN (_OneDNNLinear); its backward must be conv1d's.
    from spkemb.models import ecapa

    torch.manual_seed(0)
    layer = ecapa._Dense(6, 5, kernel=3, dilation=2).train()
    x = torch.randn(2, 11, 6, requires_grad=True)
    g = torch.randn(2, 11, 5)
    w = layer.linear.weight.view(5, 3, 6).permute(0, 2, 1)  # (out, in, k)
    ref = torch.relu(F.conv1d(x.transpose(1, 2), w, layer.linear.bias, padding=2, dilation=2)).transpose(1, 2)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, layer.linear.weight, layer.linear.bias])
    h = ecapa._linear(ecapa._shifted_taps(x, 3, 2), layer.linear.weight, layer.linear.bias, relu=True)
    assert h.grad_fn is not None
    via_onednn = "OneDNN" in type(h.grad_fn.next_functions[0][0]).__name__  # under the view back to (B, T, C)
    assert via_onednn == (ecapa._LINEAR_POINTWISE is not None)
    grads = torch.autograd.grad((h * g).sum(), [x, layer.linear.weight, layer.linear.bias])
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ecapa_trains_with_lengths():
    model = build_encoder("ecapa", **SMALL["ecapa"]).train()
    wav = torch.randn(2, 8000) * 0.1
    emb = model(wav, torch.tensor([8000, 5000]))
    emb.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_save_load_round_trip(tmp_path):
    model = _build("ecapa")
    path = save_encoder(model, tmp_path / "exp" / "encoder.pt", extra={"epoch": 3, "path": tmp_path})
    assert [p.name for p in path.parent.iterdir()] == ["encoder.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "spkemb-encoder" and raw["format_version"] == 1
    assert raw["config"] == model.config and raw["extra"]["epoch"] == 3
    wav = _speechlike(16000, 16000, 0)[None]
    with torch.no_grad():
        ref = model(wav)
        for spec in (path, str(path), tmp_path / "exp"):
            loaded = load_encoder(spec)
            assert not loaded.training
            assert loaded.extra["epoch"] == 3
            assert torch.equal(loaded(wav), ref)
    sha = file_sha256(path)
    assert len(sha) == 64 and sha == file_sha256(str(path))


def test_mfcc_stats_loads_by_name():
    model = load_encoder("mfcc-stats")
    assert model.embed_dim == 60 and not model.training
    assert model(_speechlike(8000, 16000, 0)[None]).shape == (1, 60)
    with pytest.raises(InputError, match="trainable encoder"):
        load_encoder("ecapa")


def test_load_errors(tmp_path):
    model = _build("tdnn")
    good = save_encoder(model, tmp_path / "good.pt")
    cases = {}
    cases["missing"] = tmp_path / "missing.pt"
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.pt"
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint at all" * 10)
    cases["garbage"] = tmp_path / "garbage.pt"
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases["truncated"] = tmp_path / "truncated.pt"
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    cases["wrong dict"] = tmp_path / "checkpoint.pt"
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases["not a dict"] = tmp_path / "list.pt"
    raw = torch.load(good, weights_only=True)
    torch.save({**raw, "format_version": 99}, tmp_path / "future.pt")
    cases["future"] = tmp_path / "future.pt"
    torch.save({**raw, "config": {**raw["config"], "name": "nope"}}, tmp_path / "unknown.pt")
    cases["unknown name"] = tmp_path / "unknown.pt"
    torch.save({**raw, "config": {**raw["config"], "channels": 64}}, tmp_path / "mismatch.pt")
    cases["mismatch"] = tmp_path / "mismatch.pt"
    (tmp_path / "emptyexp").mkdir()
    cases["folder without encoder.pt"] = tmp_path / "emptyexp"
    for what, path in cases.items():
        with pytest.raises(InputError) as info:
            load_encoder(path)
        assert info.value.path == str(path), what
        assert "Traceback" not in str(info.value)
    # A zip that is not a torch file at all.
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(InputError, match="cannot read"):
        load_encoder(tmp_path / "zip.pt")
    with pytest.raises(InputError, match="newer"):
        load_encoder(cases["future"])
    with pytest.raises(InputError, match="unknown encoder"):
        load_encoder(cases["unknown name"])
    with pytest.raises(InputError):
        file_sha256(cases["missing"])
