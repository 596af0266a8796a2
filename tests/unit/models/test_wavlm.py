"""wavlm-mhfa: WavLM weights from local files (torchaudio and Hugging Face layouts), MHFA pooling and
masking, encoder.pt round trips, extraction of long utterances, and bad weights files (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.data.manifest import read_manifest
from spkemb.embeddings.extract import ExtractOptions, default_chunk, extract_embeddings
from spkemb.embeddings.store import read_embeddings
from spkemb.errors import InputError
from spkemb.methods.supervised import Supervised
from spkemb.models import build_encoder, load_encoder, save_encoder
from spkemb.models.wavlm_mhfa import WavLMMHFAOptions
from spkemb.models.wavlm_weights import build_wavlm, load_frontend_weights, torchaudio_to_hf

runner = CliRunner()
DIMS = {
    "num_layers": 2,
    "hidden": 64,
    "attention_heads": 4,
    "ffn_dim": 128,
    "conv_dim": 32,
    "pos_conv_kernel": 16,
    "pos_conv_groups": 4,
}
HEAD = {"heads": 4, "compression_dim": 16, "embed_dim": 24}
TINY = {**DIMS, **HEAD}
TINY_CLI = [x for k, v in TINY.items() for x in ("--encoder-opt", f"{k}={v}")]
HF_CONFIG = {
    "model_type": "wavlm",
    "architectures": ["WavLMModel"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [32] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "num_buckets": 320,
    "max_bucket_distance": 800,
    "do_stable_layer_norm": False,
}


def _hf_names(layers: int) -> set[str]:
    """The state-dict keys of a Hugging Face ``WavLMModel`` (transformers' modeling_wavlm module names)."""
    names = {
        "feature_extractor.conv_layers.0.layer_norm.weight",
        "feature_extractor.conv_layers.0.layer_norm.bias",
        "feature_projection.layer_norm.weight",
        "feature_projection.layer_norm.bias",
        "feature_projection.projection.weight",
        "feature_projection.projection.bias",
        "encoder.pos_conv_embed.conv.weight_g",
        "encoder.pos_conv_embed.conv.weight_v",
        "encoder.pos_conv_embed.conv.bias",
        "encoder.layer_norm.weight",
        "encoder.layer_norm.bias",
        "encoder.layers.0.attention.rel_attn_embed.weight",
    }
    names |= {f"feature_extractor.conv_layers.{i}.conv.weight" for i in range(7)}
    per_layer = [f"attention.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")] + [
        "attention.out_proj.weight",
        "attention.out_proj.bias",
        "attention.gru_rel_pos_const",
        "attention.gru_rel_pos_linear.weight",
        "attention.gru_rel_pos_linear.bias",
        "layer_norm.weight",
        "layer_norm.bias",
        "feed_forward.intermediate_dense.weight",
        "feed_forward.intermediate_dense.bias",
        "feed_forward.output_dense.weight",
        "feed_forward.output_dense.bias",
        "final_layer_norm.weight",
        "final_layer_norm.bias",
    ]
    return names | {f"encoder.layers.{i}.{p}" for i in range(layers) for p in per_layer}


def _source_wavlm(seed: int = 0, **dims: int) -> torch.nn.Module:
    """A tiny torchaudio WavLM with every tensor random (norms and biases too, so a misplaced one shows)."""
    torch.manual_seed(seed)
    model = build_wavlm(WavLMMHFAOptions(**{**DIMS, **dims}).arch())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] in (32, 64) else 0.0))
    return model.eval()


def _speech(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * torch.pi * (110 + 30 * seed) * t) + 0.05 * torch.randn(n, generator=g)


@pytest.fixture(scope="module")
def source() -> torch.nn.Module:
    return _source_wavlm()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, source: torch.nn.Module) -> dict[str, Path]:
    """The source model in torchaudio's format (.pt), as a Hugging Face folder (safetensors, plus an
    unused masked_spec_embed) and as a pytorch_model.bin of a task model (``wavlm.`` prefix)."""
    root = tmp_path_factory.mktemp("weights")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save(state, root / "wavlm.pt")
    hf = torchaudio_to_hf(state)
    assert set(hf) == _hf_names(2)
    folder = root / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file({**hf, "masked_spec_embed": torch.randn(64)}, str(folder / "model.safetensors"))
    folder_bin = root / "hf-bin"
    folder_bin.mkdir()
    (folder_bin / "config.json").write_text(json.dumps(HF_CONFIG))
    torch.save({f"wavlm.{k}": v for k, v in hf.items()}, folder_bin / "pytorch_model.bin")
    return {"torchaudio": root / "wavlm.pt", "hf": folder, "hf-bin": folder_bin}


@pytest.mark.parametrize("layout", ["torchaudio", "hf", "hf-bin"])
def test_frontend_weights_give_the_source_models_hidden_states(
    source: torch.nn.Module, weights: dict[str, Path], layout: str
) -> None:
    enc = build_encoder("wavlm-mhfa", **TINY, frontend_weights=str(weights[layout])).eval()
    assert enc.frontend_loaded.startswith("frontend weights: WavLM 2 layers x 64")
    assert ("Hugging Face" if layout.startswith("hf") else "torchaudio") in enc.frontend_loaded
    assert enc.config["frontend_weights"] is None  # encoder.pt carries the weights, not the path
    wav = _speech(12000, 0).unsqueeze(0)
    with torch.no_grad():
        ours, pad = enc.hidden_states(wav)
        ref, _ = source.extract_features(wav)
    assert pad is None and len(ours) == 3
    for a, b in zip(ours[1:], ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_padded_batch_equals_each_utterance_alone() -> None:
    torch.manual_seed(1)
    enc = build_encoder("wavlm-mhfa", **TINY).eval()
    lens = [16000, 7000, 11111]
    singles = [_speech(n, i) for i, n in enumerate(lens)]
    wav = torch.zeros(3, max(lens))
    for i, x in enumerate(singles):
        wav[i, : len(x)] = x
    with torch.no_grad():
        batch = enc(wav, torch.tensor(lens))
        alone = torch.cat([enc(x.unsqueeze(0)) for x in singles])
        garbage = enc(wav + (torch.arange(wav.shape[1]) >= torch.tensor(lens)[:, None]) * 5.0, torch.tensor(lens))
    batched_cnn = enc(wav, torch.tensor(lens)).detach()  # with gradients the CNN runs on the whole batch
    assert batch.shape == (3, 24)
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched_cnn, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(garbage, batch, rtol=0, atol=1e-5)  # padded samples have no say


def test_mhfa_pools_the_chosen_layers_with_masked_attention() -> None:
    torch.manual_seed(2)
    enc = build_encoder("wavlm-mhfa", **TINY, layers=[0, 1]).eval()
    assert len(enc.wavlm.encoder.transformer.layers) == 1  # layer 2 is never computed, so not built
    assert enc.mhfa.weights_k.shape == (2,) and enc.mhfa.proj.in_features == 4 * 16
    hidden = [torch.randn(2, 9, 64) for _ in range(2)]
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 5:] = True
    out = enc.mhfa(hidden, pad)
    changed = [h.clone() for h in hidden]
    for h in changed:
        h[1, 5:] = 100.0
    torch.testing.assert_close(enc.mhfa(changed, pad), out)
    torch.testing.assert_close(enc.mhfa([h[1:, :5] for h in hidden]), out[1:])
    assert not torch.allclose(enc.mhfa(changed), out)  # without the mask the padding would count


@pytest.mark.parametrize(
    "dims, match",
    [({"hidden": 96}, r"is \(96, 32\) in the encoder|another WavLM size"), ({"num_layers": 3}, "missing")],
)
def test_weights_of_another_shape_are_refused(weights: dict[str, Path], dims: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_encoder("wavlm-mhfa", **{**TINY, **dims}, frontend_weights=str(weights["torchaudio"]))
    with pytest.raises(InputError, match="another WavLM"):  # the folder's config.json says so first
        build_encoder("wavlm-mhfa", **{**TINY, **dims}, frontend_weights=str(weights["hf"]))


def test_encoder_pt_reloads_and_extracts_identically(tmp_path: Path, manifest: Path, weights: dict[str, Path]) -> None:
    out = tmp_path / "exp"
    res = runner.invoke(
        app,
        [
            "pretrain",
            str(manifest),
            "-o",
            str(out),
            "--method",
            "none",
            "--encoder",
            "wavlm-mhfa",
            *TINY_CLI,
            "--frontend-weights",
            str(weights["hf"]),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "frontend weights: WavLM 2 layers x 64" in res.output
    enc = load_encoder(out)
    source = build_encoder("wavlm-mhfa", **TINY, frontend_weights=str(weights["hf"]))
    wavlm_state = {k: v for k, v in enc.state_dict().items() if k.startswith("wavlm.")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in wavlm_state.items())
    emb = tmp_path / "e.h5"
    assert runner.invoke(app, ["extract", str(out), str(manifest), "-o", str(emb)]).exit_code == 0
    store = read_embeddings(emb)
    again = load_encoder(out / "encoder.pt")
    for utt, vec in zip(read_manifest(manifest)[:4], store.vectors[:4], strict=False):
        x, _ = sf.read(utt.path, dtype="float32")
        with torch.no_grad():
            direct = again(torch.from_numpy(x).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(vec, direct, rtol=0, atol=2e-5)


def test_extract_chunks_long_utterances_and_runs_in_bf16(tmp_path: Path, manifest: Path) -> None:
    torch.manual_seed(3)
    enc = build_encoder("wavlm-mhfa", **TINY, max_seconds=0.5).eval()
    assert default_chunk(enc, ExtractOptions()).chunk == 0.5 and default_chunk(enc, ExtractOptions(chunk=3)).chunk == 3
    utt = read_manifest(manifest)[0]
    fp32 = extract_embeddings(enc, [utt], tmp_path / "a.h5", {}, ExtractOptions(device="cpu"))
    store = read_embeddings(fp32.path)
    assert json.loads(store.attrs["options"])["chunk"] == 0.5
    x = torch.from_numpy(sf.read(utt.path, dtype="float32")[0])
    c = 8000
    starts = list(range(0, len(x) - c + 1, c))
    if starts[-1] + c < len(x):
        starts.append(len(x) - c)
    with torch.no_grad():
        windows = enc(torch.stack([x[s : s + c] for s in starts])).mean(0).numpy()
    np.testing.assert_allclose(store.vectors[0], windows, rtol=0, atol=2e-5)
    bf16 = extract_embeddings(enc, [utt], tmp_path / "b.h5", {}, ExtractOptions(device="cpu", precision="bf16"))
    v = read_embeddings(bf16.path).vectors[0]
    assert np.isfinite(v).all() and v @ windows / np.linalg.norm(v) / np.linalg.norm(windows) > 0.98


def test_training_options_layers_freezing_and_checkpointing() -> None:
    torch.manual_seed(4)
    enc = build_encoder("wavlm-mhfa", **TINY)
    blocks = enc.layers()
    assert len(blocks) == 2 + 2 and blocks[-1] is enc.mhfa
    covered = {id(p) for b in blocks for p in b.parameters()}
    assert covered == {id(p) for p in enc.parameters()}  # every parameter gets its layer's decayed lr
    method = Supervised(enc, labels=[0, 1], n_classes=2, layer_decay=0.5, encoder_lr_scale=0.1)
    scales = [g["lr_scale"] for g in method.param_groups() if g["params"]]
    assert scales[:4] == pytest.approx([0.1 * 0.5**3, 0.1 * 0.5**2, 0.1 * 0.5, 0.1])
    wav = torch.stack([_speech(8000, 0), _speech(8000, 1)])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(4)
        m = build_encoder("wavlm-mhfa", **TINY, gradient_checkpointing=ckpt).train()
        m(wav).square().sum().backward()
        grads.append(m.wavlm.encoder.transformer.layers[0].feed_forward.output_dense.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
    frozen = build_encoder("wavlm-mhfa", **TINY, freeze_frontend=True).train()
    assert not frozen.wavlm.training and frozen.mhfa.training
    frozen(wav).square().sum().backward()
    assert all(p.grad is None for p in frozen.wavlm.parameters()) and frozen.mhfa.proj.weight.grad is not None
    assert frozen.mhfa.weights_k.grad is not None and frozen.mhfa.weights_v.grad is not None
    cnn = build_encoder("wavlm-mhfa", **TINY, freeze_cnn=True).train()
    cnn(wav).square().sum().backward()
    assert all(p.grad is None for p in cnn.wavlm.feature_extractor.parameters())
    assert cnn.wavlm.encoder.feature_projection.projection.weight.grad is not None


def test_bad_options_are_refused() -> None:
    for bad in ({"layers": [0, 5]}, {"hidden": 66}, {"size": "huge"}, {"max_seconds": 0}):
        with pytest.raises(InputError):
            build_encoder("wavlm-mhfa", **{**TINY, **bad})


def _bad_files(root: Path, weights: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    ecapa = root / "ecapa.pt"
    save_encoder(
        build_encoder("ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8, embed_dim=16), ecapa
    )
    blob = (weights["hf"] / "model.safetensors").read_bytes()
    trunc = root / "trunc" / "model.safetensors"
    trunc.parent.mkdir()
    trunc.write_bytes(blob[: len(blob) // 2])
    junk = root / "junk.pt"
    junk.write_bytes(b"\x00\x01not a checkpoint" * 50)
    hubert = root / "hubert"
    hubert.mkdir()
    (hubert / "config.json").write_text(json.dumps({**HF_CONFIG, "model_type": "hubert"}))
    (hubert / "model.safetensors").write_bytes(blob)
    other = root / "wide.pt"
    torch.save(_source_wavlm(hidden=96).state_dict(), other)
    return {
        "missing": (root / "nope.safetensors", "no such file"),
        "ecapa": (ecapa, "spkemb encoder file"),
        "truncated": (trunc, "truncated"),
        "junk": (junk, "not a weights file"),
        "hubert": (hubert, "model_type 'hubert'"),
        "other-size": (other, "another WavLM size"),
    }


def test_bad_frontend_weights_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, manifest: Path, weights: dict[str, Path]
) -> None:
    for name, (path, message) in _bad_files(tmp_path, weights).items():
        out = tmp_path / f"exp-{name}"
        res = runner.invoke(
            app,
            [
                "pretrain",
                str(manifest),
                "-o",
                str(out),
                "--method",
                "none",
                "--encoder",
                "wavlm-mhfa",
                *TINY_CLI,
                "--frontend-weights",
                str(path),
            ],
        )
        assert res.exit_code == 2, (name, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spkemb: error:") and message in lines[0], (name, lines)
        assert not out.exists(), name
    out = tmp_path / "ft"
    res = runner.invoke(
        app,
        [
            "finetune",
            str(manifest),
            "-o",
            str(out),
            "--encoder",
            "wavlm-mhfa",
            *TINY_CLI,
            "--frontend-weights",
            str(tmp_path / "junk.pt"),
            "--max-steps",
            "1",
        ],
    )
    assert res.exit_code == 2 and "not a weights file" in res.output and not out.exists()


def test_a_failed_load_leaves_the_model_unchanged(weights: dict[str, Path], tmp_path: Path) -> None:
    enc = build_encoder("wavlm-mhfa", **TINY)
    before = {k: v.clone() for k, v in enc.wavlm.state_dict().items()}
    state = torch.load(weights["torchaudio"], weights_only=True)
    state["encoder.transformer.layers.1.final_layer_norm.bias"] = torch.full((64,), float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(InputError, match="NaN"):
        load_frontend_weights(enc.wavlm, enc.arch, tmp_path / "nan.pt")
    assert all(torch.equal(v, before[k]) for k, v in enc.wavlm.state_dict().items())


def test_a_random_wavlm_is_initialised_so_its_output_depends_on_its_input() -> None:
    """PyTorch's default init shrinks the signal through the seven convolutions to ~1e-4 (below the
    projection's layer-norm epsilon): a random model then gives every utterance the same embedding."""
    torch.manual_seed(5)
    enc = build_encoder("wavlm-mhfa", **TINY).eval()
    wav = torch.stack([_speech(16000, 0), _speech(16000, 3)])
    with torch.no_grad():
        feats, _ = enc._conv_features(wav, None)
        emb = enc(wav)
    assert feats.std() > 0.1
    assert torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0) < 0.99


def test_frozen_frontend_warm_up_trains_mhfa_first_then_everything() -> None:
    """``freeze_frontend_steps``: for the first steps WavLM gets no gradient (and runs without
    dropout) while MHFA and the head learn; after them the whole model trains."""
    torch.manual_seed(6)
    enc = build_encoder("wavlm-mhfa", **TINY, dropout=0.1)
    method = Supervised(enc, labels=[0, 1], n_classes=2, n_crops=1, freeze_frontend_steps=2).train()
    batch = {"views": [torch.stack([_speech(8000, 0), _speech(8000, 1)]).unsqueeze(1)], "index": torch.tensor([0, 1])}
    for step, frozen in ((0, True), (1, True), (2, False)):
        method.zero_grad(set_to_none=True)
        method.on_step_start(step)
        assert enc.frontend_frozen is frozen and enc.wavlm.training is not frozen
        loss, _ = method(batch)
        loss.backward()
        wavlm_grads = [p.grad for p in enc.wavlm.parameters() if p.requires_grad]
        assert all((g is None) is frozen for g in wavlm_grads), step
        assert enc.mhfa.proj.weight.grad is not None and all(p.requires_grad for p in enc.wavlm.encoder.parameters())
    with pytest.raises(ValueError, match="pretrained frontend"):
        Supervised(
            build_encoder("ecapa", channels=16, mfa_channels=48, attention_channels=8, se_channels=8, embed_dim=16),
            labels=[0, 1],
            n_classes=2,
            freeze_frontend_steps=2,
        )
    with pytest.raises(ValueError, match="stays frozen"):
        build_encoder("wavlm-mhfa", **TINY, freeze_frontend=True).set_frontend_frozen(False)


def test_init_and_frontend_weights_together_are_refused(
    tmp_path: Path, manifest: Path, weights: dict[str, Path]
) -> None:
    pre = tmp_path / "pre"
    assert (
        runner.invoke(
            app, ["pretrain", str(manifest), "-o", str(pre), "--method", "none", "--encoder", "wavlm-mhfa", *TINY_CLI]
        ).exit_code
        == 0
    )
    out = tmp_path / "ft"
    res = runner.invoke(
        app,
        [
            "finetune",
            str(manifest),
            "-o",
            str(out),
            "--init",
            str(pre),
            "--frontend-weights",
            str(weights["hf"]),
            "--max-steps",
            "1",
        ],
    )
    assert res.exit_code == 2 and "would be overwritten" in res.output and not out.exists(), res.output
    assert len(res.output.strip().splitlines()) == 1
    # Without --frontend-weights, the same run trains, through a frozen-frontend warm-up.
    res = runner.invoke(
        app,
        [
            "finetune",
            str(manifest),
            "-o",
            str(out),
            "--init",
            str(pre),
            "--freeze-frontend-steps",
            "1",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--method-opt",
            "items_per_speaker=2",
            "--method-opt",
            "crop_seconds=0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    trained, start = load_encoder(out), load_encoder(pre)
    assert not torch.equal(
        trained.wavlm.encoder.feature_projection.projection.weight,
        start.wavlm.encoder.feature_projection.projection.weight,
    )  # unfrozen at step 1
