"""WeSpeaker importer on tiny random checkpoints in WeSpeaker's layout (no WeSpeaker needed)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml

from spkemb.errors import InputError
from spkemb.imports import import_model
from spkemb.models import build_encoder, load_encoder, save_encoder

# Key names of WeSpeaker's checkpoints (wespeaker/models/resnet.py, ecapa_tdnn.py), as saved by its
# trainer: wrapped in DDP ('module.'), with the training head ('projection.*') beside the model.
RESNET_KEYS = ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
               "layer4.2.bn2.weight", "seg_1.weight", "seg_1.bias"]  # fmt: skip
ECAPA_KEYS = ["layer1.conv.weight", "layer2.se_res2block.1.convs.0.weight", "layer4.se_res2block.3.linear2.bias",
              "conv.weight", "pool.linear1.weight", "pool.linear2.bias", "bn.running_var", "linear.weight"]  # fmt: skip


def _config(model: str, args: dict[str, object]) -> dict[str, object]:
    return {
        "model": model,
        "model_args": args,
        "dataset_args": {
            "resample_rate": 16000,
            "fbank_args": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25, "dither": 1.0},
        },  # fmt: skip
        "projection_args": {"project_type": "arc_margin", "scale": 32.0},
    }


def _folder(tmp: Path, model: str, args: dict[str, object], name: str, opts: dict[str, object]) -> Path:
    """A WeSpeaker model folder whose avg_model.pt has random weights in WeSpeaker's key layout."""
    torch.manual_seed(0)
    net = build_encoder(name, **opts)
    state = {}
    for k, v in net.state_dict().items():
        v = v.clone()
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif v.is_floating_point():
            v.normal_(0, 0.1)
        state[f"module.{k}"] = v
    state["module.projection.weight"] = torch.randn(10, int(opts.get("embed_dim", 256)))
    folder = tmp / model
    folder.mkdir()
    torch.save(state, folder / "avg_model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(_config(model, args)))
    return folder


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    args = {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}
    return _folder(tmp_path_factory.mktemp("ws"), "ResNet34", args, "wespeaker-resnet", {})


def _wav() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(2, 8000, generator=g) * 0.1
    return wav, torch.tensor([8000, 5600])


def test_resnet34_folder_imports_and_padded_batch_equals_each_alone(resnet_dir: Path) -> None:
    model = import_model("wespeaker", resnet_dir)
    assert model.config["name"] == "wespeaker-resnet" and model.embed_dim == 256
    own = set(model.state_dict())
    assert set(RESNET_KEYS) <= own and not any(k.startswith("projection") for k in own)
    imported = model.extra["imported"]
    assert imported["format"] == "wespeaker" and imported["source"] == str(resnet_dir)
    assert len(imported["sha256"]) == 64 and imported["peer_config"]["model"] == "ResNet34"
    wav, lengths = _wav()
    with torch.no_grad():
        batch = model(wav, lengths)
        alone = model(wav[1:, :5600])
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


def test_imported_model_round_trips_through_save_and_load(resnet_dir: Path, tmp_path: Path) -> None:
    model = import_model("wespeaker", resnet_dir / "avg_model.pt")  # the checkpoint file works too
    out = save_encoder(model, tmp_path / "encoder.pt", extra=model.extra)
    again = load_encoder(out)
    assert again.extra["imported"]["format"] == "wespeaker"
    wav, lengths = _wav()
    with torch.no_grad():
        assert torch.equal(model(wav, lengths), again(wav, lengths))


def test_ecapa_c512_imports(tmp_path: Path) -> None:
    args = {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}
    folder = _folder(tmp_path, "ECAPA_TDNN_c512", args, "wespeaker-ecapa", {"channels": 512, "embed_dim": 192})
    model = import_model("wespeaker", folder)
    assert model.config["name"] == "wespeaker-ecapa" and model.config["channels"] == 512
    assert set(ECAPA_KEYS) <= set(model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 4000) * 0.1).shape == (1, 192)


def _resave(folder: Path, tmp: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text((folder / "config.yaml").read_text())
    state = torch.load(folder / "avg_model.pt", weights_only=True)
    edit(state)
    torch.save(state, bad / "avg_model.pt")
    return bad


def test_missing_key_is_named(resnet_dir: Path, tmp_path: Path) -> None:
    bad = _resave(resnet_dir, tmp_path, lambda s: s.pop("module.layer3.1.conv2.weight"))
    with pytest.raises(InputError, match=r"lacks key 'layer3\.1\.conv2\.weight'"):
        import_model("wespeaker", bad)


def test_wrong_shape_is_named(resnet_dir: Path, tmp_path: Path) -> None:
    bad = _resave(resnet_dir, tmp_path, lambda s: s.update({"module.seg_1.weight": torch.zeros(128, 5120)}))
    with pytest.raises(InputError, match=r"'seg_1\.weight' has shape \(128, 5120\)"):
        import_model("wespeaker", bad)


def test_unexpected_key_is_named(resnet_dir: Path, tmp_path: Path) -> None:
    bad = _resave(resnet_dir, tmp_path, lambda s: s.update({"module.extra_layer.weight": torch.zeros(3)}))
    with pytest.raises(InputError, match=r"'extra_layer\.weight' does not fit"):
        import_model("wespeaker", bad)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("unpickled!",))


@pytest.mark.parametrize("content", [b"not a checkpoint at all\n", pickle.dumps(_Evil())], ids=["text", "pickle"])
def test_foreign_checkpoint_is_one_line(resnet_dir: Path, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text((resnet_dir / "config.yaml").read_text())
    (bad / "avg_model.pt").write_bytes(content)
    with pytest.raises(InputError) as err:
        import_model("wespeaker", bad)
    assert "\n" not in str(err.value) and "avg_model.pt" in str(err.value)


def test_unsupported_or_missing_config(resnet_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "avg_model.pt").write_bytes((resnet_dir / "avg_model.pt").read_bytes())
    with pytest.raises(InputError, match="config.yaml"):
        import_model("wespeaker", bad)
    (bad / "config.yaml").write_text(yaml.safe_dump(_config("ResNet50", {"feat_dim": 80})))
    with pytest.raises(InputError, match="'ResNet50' is not supported"):
        import_model("wespeaker", bad)
