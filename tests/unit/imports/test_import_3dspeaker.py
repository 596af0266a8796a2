"""3D-Speaker (CAM++, ERes2Net) importer on a random checkpoint in 3D-Speaker's layout (no 3D-Speaker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spkemb.errors import InputError
from spkemb.imports import import_model
from spkemb.models import build_encoder, load_encoder, save_encoder
from spkemb.models.kaldi_fbank import KaldiFbank

# Key names of 3D-Speaker's CAM++ (speakerlab/models/campplus/DTDNN.py, layers.py).
CAMPPLUS_KEYS = ["head.conv1.weight", "head.layer1.0.shortcut.0.weight", "head.conv2.weight",
                 "xvector.tdnn.linear.weight", "xvector.tdnn.nonlinear.batchnorm.running_mean",
                 "xvector.block1.tdnnd1.nonlinear1.batchnorm.weight", "xvector.block1.tdnnd12.linear1.weight",
                 "xvector.block2.tdnnd24.cam_layer.linear_local.weight",
                 "xvector.block3.tdnnd16.cam_layer.linear2.bias",
                 "xvector.transit3.linear.weight", "xvector.out_nonlinear.batchnorm.bias",
                 "xvector.dense.linear.weight", "xvector.dense.nonlinear.batchnorm.running_var"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """campplus_cn_common.bin: a bare state dict (192-d, as 3D-Speaker's CN-Celeb model)."""
    torch.manual_seed(0)
    state = {}
    for k, v in build_encoder("campplus", embed_dim=192).state_dict().items():
        v = v.clone()
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
        state[k] = v
    path = tmp_path_factory.mktemp("3ds") / "campplus_cn_common.bin"
    torch.save(state, path)
    return path


def test_campplus_imports_with_sizes_from_shapes(ckpt: Path) -> None:
    model = import_model("3dspeaker", ckpt.parent)  # the folder that holds the .bin
    assert model.config["name"] == "campplus" and model.embed_dim == 192
    assert tuple(model.config["block_layers"]) == (12, 24, 16)
    assert set(CAMPPLUS_KEYS) <= set(model.state_dict())
    assert model.extra["imported"]["format"] == "3dspeaker"
    wav = torch.randn(2, 24000, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        batch = model(wav, torch.tensor([24000, 17000]))
        alone = model(wav[1:, :17000])
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


def test_round_trip(ckpt: Path, tmp_path: Path) -> None:
    model = import_model("3dspeaker", ckpt)
    again = load_encoder(save_encoder(model, tmp_path / "e.pt", extra=model.extra))
    wav = torch.randn(1, 12000) * 0.1
    with torch.no_grad():
        assert torch.equal(model(wav), again(wav))


def test_missing_and_misshapen_keys_are_named(ckpt: Path, tmp_path: Path) -> None:
    state = torch.load(ckpt, weights_only=True)
    state.pop("xvector.block2.tdnnd3.cam_layer.linear1.bias")
    torch.save(state, tmp_path / "a.bin")
    with pytest.raises(InputError, match=r"lacks key 'xvector\.block2\.tdnnd3\.cam_layer\.linear1\.bias'"):
        import_model("3dspeaker", tmp_path / "a.bin")
    state = torch.load(ckpt, weights_only=True)
    state["xvector.transit1.linear.weight"] = torch.zeros(7, 7, 1)
    torch.save(state, tmp_path / "b.bin")
    with pytest.raises(InputError, match=r"'xvector\.transit1\.linear\.weight' has shape \(7, 7, 1\)"):
        import_model("3dspeaker", tmp_path / "b.bin")


def test_foreign_file(tmp_path: Path) -> None:
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a CAM\\+\\+ or ERes2Net checkpoint"):
        import_model("3dspeaker", tmp_path / "other.ckpt")
    (tmp_path / "junk.bin").write_text("hello")
    with pytest.raises(InputError, match="junk.bin"):
        import_model("3dspeaker", tmp_path / "junk.bin")


def test_campplus_trains_and_frontend_is_kaldi() -> None:
    model = build_encoder("campplus", embed_dim=32, block_layers=(2, 2, 2)).train()
    loss = model(torch.randn(2, 8000) * 0.1).square().mean()
    loss.backward()
    assert model.head.conv1.weight.grad is not None
    from torchaudio.compliance import kaldi

    wav = torch.randn(8000) * 0.1
    ref = kaldi.fbank(wav[None], num_mel_bins=80, sample_frequency=16000, dither=0.0)
    ref = ref - ref.mean(0, keepdim=True)
    assert torch.allclose(KaldiFbank(window="povey", scale=1.0)(wav[None])[0], ref)


ERES2NET_KEYS = ["conv1.weight", "layer1.0.convs.1.weight", "layer3.0.fuse_models.0.local_att.0.weight",
                 "layer4.0.shortcut.1.running_var",
                 "layer1_downsample.weight", "fuse_mode1234.local_att.4.weight", "seg_1.bias"]  # fmt: skip


def test_eres2net_imports_with_sizes_from_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = build_encoder("eres2net", m_channels=16, embed_dim=64).state_dict()
    torch.save(state, tmp_path / "pretrained_eres2net.ckpt")
    model = import_model("3dspeaker", tmp_path)
    assert model.config["name"] == "eres2net" and model.config["m_channels"] == 16 and model.embed_dim == 64
    assert tuple(model.config["layers"]) == (3, 4, 6, 3) and model.config["scale"] == 2
    assert set(ERES2NET_KEYS) <= set(model.state_dict())
    wav = torch.randn(2, 9000, generator=torch.Generator().manual_seed(3)) * 0.1
    with torch.no_grad():
        batch = model(wav, torch.tensor([9000, 6500]))
        alone = model(wav[1:, :6500])
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


def test_eres2net_trains() -> None:
    model = build_encoder("eres2net", m_channels=8, layers=(1, 1, 1, 1), embed_dim=16).train()
    model(torch.randn(2, 8000) * 0.1).square().mean().backward()
    assert model.layer4[0].fuse_models[0].local_att[0].weight.grad is not None
    assert model.layer1_downsample.weight.grad is not None
