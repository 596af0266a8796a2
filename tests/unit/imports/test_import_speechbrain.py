"""SpeechBrain import (issue 19): a tiny random checkpoint in SpeechBrain's key layout, built here from
its documented key names and shapes (no SpeechBrain needed), imports, extracts and round trips; bad
files are one line naming the file. The comparison with SpeechBrain's own code is
benchmarks/verify_import_speechbrain.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sb_layout import DIMS, sb_folder, sb_state  # noqa: F401  (tests/helpers)

from spkemb.errors import InputError
from spkemb.imports import import_model
from spkemb.models import load_encoder, save_encoder


def test_import_reads_the_dims_from_the_shapes_and_records_the_source(tmp_path: Path) -> None:
    model = import_model("speechbrain", sb_folder(tmp_path / "sb"))
    assert model.config["name"] == "speechbrain-ecapa"
    for key, value in DIMS.items():
        assert model.config[key] == value, key
    imported = model.extra["imported"]
    assert imported["format"] == "speechbrain" and imported["embedding_norm"] is True
    assert set(imported["sha256"]) == {"embedding_model.ckpt", "mean_var_norm_emb.ckpt"}
    assert imported["peer_config"]["dims_from"] == "tensor shapes"
    assert torch.equal(model.emb_mean, torch.linspace(-1, 1, 12))


def test_every_key_maps_both_ways(tmp_path: Path) -> None:
    from spkemb.imports.speechbrain import _peer_key, _rename

    state = sb_state()
    model = import_model("speechbrain", sb_folder(tmp_path / "sb"))
    assert {_rename(k) for k in state} == {k for k in model.state_dict() if not k.startswith("emb_")}
    assert all(_rename(_peer_key(k)) == k for k in model.state_dict() if not k.startswith("emb_"))


def test_the_embedding_mean_is_subtracted(tmp_path: Path) -> None:
    plain = import_model("speechbrain", sb_folder(tmp_path / "a", emb_norm=False)).eval()
    normed = import_model("speechbrain", sb_folder(tmp_path / "b")).eval()
    wav = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = plain(wav) - normed(wav)
    assert torch.allclose(diff, torch.linspace(-1, 1, 12).unsqueeze(0), atol=1e-5)


def test_a_padded_batch_gives_each_utterance_its_own_embedding(tmp_path: Path) -> None:
    model = import_model("speechbrain", sb_folder(tmp_path / "sb")).eval()
    g = torch.Generator().manual_seed(2)
    wavs = [0.1 * torch.randn(n, generator=g) for n in (8000, 5321, 3000)]
    batch = torch.zeros(3, 8000)
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    with torch.no_grad():
        together = model(batch, torch.tensor([len(w) for w in wavs]))
        alone = torch.cat([model(w.unsqueeze(0)) for w in wavs])
    assert torch.allclose(together, alone, atol=1e-4)


def test_the_encoder_file_round_trips(tmp_path: Path) -> None:
    model = import_model("speechbrain", sb_folder(tmp_path / "sb")).eval()
    path = save_encoder(model, tmp_path / "encoder.pt", extra=model.extra)
    again = load_encoder(path).eval()
    assert again.extra["imported"]["format"] == "speechbrain"
    wav = 0.1 * torch.randn(2, 6000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(wav), again(wav))


def test_the_checkpoint_file_itself_is_a_source(tmp_path: Path) -> None:
    folder = sb_folder(tmp_path / "sb")
    model = import_model("speechbrain", folder / "embedding_model.ckpt")
    assert model.extra["imported"]["embedding_norm"] is True


def test_hyperparams_are_read_and_unsupported_settings_refused(tmp_path: Path) -> None:
    folder = sb_folder(tmp_path / "sb")
    hp = folder / "hyperparams.yaml"
    hp.write_text(
        "n_mels: 16\n"
        "compute_features: !new:speechbrain.lobes.features.Fbank\n    n_mels: !ref <n_mels>\n"
        "embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN\n"
        "    input_size: !ref <n_mels>\n    channels: [16, 16, 16, 16, 24]\n    kernel_sizes: [5, 3, 3, 3, 1]\n"
        "mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization\n"
        "    norm_type: global\n    std_norm: False\n"
    )
    model = import_model("speechbrain", folder)
    peer = model.extra["imported"]["peer_config"]
    assert peer["dims_from"] == "tensor shapes" and peer["hyperparams"]["embedding_model"]["input_size"] == 16
    assert "hyperparams.yaml" in model.extra["imported"]["sha256"]
    hp.write_text(hp.read_text().replace("kernel_sizes: [5, 3, 3, 3, 1]", "dilations: [1, 2, 2, 2, 1]"))
    with pytest.raises(InputError, match=r"embedding_model.dilations .* not supported"):
        import_model("speechbrain", folder)
    hp.write_text("embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector\n    in_channels: 24\n")
    with pytest.raises(InputError, match="not an ECAPA_TDNN"):
        import_model("speechbrain", folder)


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda s: s.pop("fc.conv.weight"), "no tensor 'fc.conv.weight'"),
        (lambda s: s.update({"classifier.weight": torch.zeros(3, 12)}), "key 'classifier.weight' does not fit"),
        (lambda s: s.pop("blocks.2.tdnn2.norm.norm.running_var"), "no key 'blocks.2.tdnn2.norm.norm.running_var'"),
        (
            lambda s: s.update({"asp.conv.conv.bias": torch.zeros(5)}),
            r"key 'asp.conv.conv.bias' has shape \(5,\), expected \(24,\)",
        ),
    ],
)
def test_a_key_that_does_not_fit_is_named(tmp_path: Path, break_it, message: str) -> None:  # type: ignore[no-untyped-def]
    state = sb_state()
    break_it(state)
    tmp_path.joinpath("sb").mkdir()
    torch.save(state, tmp_path / "sb" / "embedding_model.ckpt")
    with pytest.raises(InputError, match=message) as err:
        import_model("speechbrain", tmp_path / "sb")
    assert "embedding_model.ckpt" in str(err.value) and "\n" not in str(err.value)


def test_foreign_and_broken_files_are_one_line_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "sb"
    folder.mkdir()
    with pytest.raises(InputError, match="no embedding_model.ckpt"):
        import_model("speechbrain", folder)
    ckpt = folder / "embedding_model.ckpt"
    for content in (b"not a checkpoint", b""):
        ckpt.write_bytes(content)
        with pytest.raises(InputError, match="not a readable SpeechBrain checkpoint") as err:
            import_model("speechbrain", folder)
        assert str(ckpt) in str(err.value) and "\n" not in str(err.value)
    torch.save([1, 2, 3], ckpt)
    with pytest.raises(InputError, match="holds a list"):
        import_model("speechbrain", folder)
    torch.save(sb_state(), ckpt)
    torch.save({"count": 1}, folder / "mean_var_norm_emb.ckpt")
    with pytest.raises(InputError, match="no tensor 'glob_mean'") as err:
        import_model("speechbrain", folder)
    assert "mean_var_norm_emb.ckpt" in str(err.value)


def test_a_pickled_object_is_never_unpickled(tmp_path: Path) -> None:
    folder = tmp_path / "sb"
    folder.mkdir()
    torch.save({"blocks.0.conv.conv.weight": Path("/etc/passwd")}, folder / "embedding_model.ckpt")
    with pytest.raises(InputError, match="not a readable SpeechBrain checkpoint"):
        import_model("speechbrain", folder)


# The layout of the published spkrec-ecapa-voxceleb hyperparams.yaml (sizes shrunk to the tiny model).
PUBLISHED_HYPERPARAMS = """\
n_mels: 16
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
out_n_neurons: 7205
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [16, 16, 16, 16, 24]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    lin_neurons: 12
classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 12
    out_neurons: !ref <out_n_neurons>
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    compute_features: !ref <compute_features>
    embedding_model: !ref <embedding_model>
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
"""


def test_the_published_layout_with_old_style_norm_stats_imports(tmp_path: Path) -> None:
    folder = sb_folder(tmp_path / "sb", emb_norm=False)
    (folder / "hyperparams.yaml").write_text(PUBLISHED_HYPERPARAMS)
    stats = {"count": 9, "glob_mean": torch.full((12,), 0.5), "glob_std": torch.ones(12)}
    stats.update({"spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}})  # type: ignore[dict-item]
    torch.save(stats, folder / "mean_var_norm_emb.ckpt")
    model = import_model("speechbrain", folder)
    assert model.config["emb_std_norm"] is False and torch.equal(model.emb_mean, torch.full((12,), 0.5))
    assert model.extra["imported"]["peer_config"]["hyperparams"]["mean_var_norm_emb"]["norm_type"] == "global"
