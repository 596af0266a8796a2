"""Finetuning losses: AAM against a numpy hand computation, the margin warm-up, sub-centre AAM with
outlier dropping and the inter-top-k penalty, SupCon+AAM against an independent SupCon, and the
AAM + SupCon combination."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spkemb.losses import (
    AAMPlusSupCon,
    AAMSoftmax,
    MarginScheduler,
    SubCenterAAM,
    SupConAAM,
    dominant_subcenter_keep,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- AAM against numpy


def _np_aam_logits(x: np.ndarray, w: np.ndarray, labels: np.ndarray, m: float, s: float) -> np.ndarray:
    """ArcFace logits by the book: acos, add m to the target angle, fall back past pi - m."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = xn @ wn.T
    out = cos.copy()
    for i, y in enumerate(labels):
        theta = math.acos(float(np.clip(cos[i, y], -1, 1)))
        out[i, y] = math.cos(theta + m) if theta + m <= math.pi else cos[i, y] - m * math.sin(m)
    return s * out


def test_aam_logits_loss_and_predictions_match_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3))
    w = rng.normal(size=(4, 3))
    x[4] = -w[2]  # target angle pi: the fallback branch
    labels = np.array([0, 1, 2, 3, 2])
    aam = AAMSoftmax(embed_dim=3, n_classes=4, margin=0.25, scale=12.0)
    with torch.no_grad():
        aam.weight.copy_(torch.from_numpy(w).float())
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(labels)
    want = _np_aam_logits(x, w, labels, 0.25, 12.0)
    np.testing.assert_allclose(aam.logits(xt, yt).detach().numpy(), want, rtol=1e-5, atol=1e-5)

    ce = np.log(np.exp(want).sum(1)) - want[np.arange(5), labels]
    out = aam.detailed(xt, yt)
    np.testing.assert_allclose(out.per_sample.numpy(), ce, rtol=1e-5, atol=1e-5)
    assert out.loss.item() == pytest.approx(ce.mean(), rel=1e-5)
    plain = 12.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    prob = np.exp(plain - plain.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    assert out.pred.tolist() == plain.argmax(1).tolist()
    np.testing.assert_allclose(out.conf.numpy(), prob.max(1), rtol=1e-5)
    assert out.acc.item() == pytest.approx((plain.argmax(1) == labels).mean())
    loss, acc = aam(xt, yt)  # forward keeps its (loss, acc) API
    assert loss.item() == pytest.approx(out.loss.item()) and acc.item() == out.acc.item()


def test_aam_keep_mask_averages_over_kept_rows_only() -> None:
    x, labels = _randn(6, 4, seed=1).requires_grad_(True), torch.tensor([0, 1, 2, 0, 1, 2])
    aam = AAMSoftmax(4, 3)
    keep = torch.tensor([True, False, True, True, False, False])
    out = aam.detailed(x, labels, keep)
    assert out.loss.item() == pytest.approx(out.per_sample[keep].mean().item(), rel=1e-6)
    assert out.kept.tolist() == keep.tolist()
    out.loss.backward()
    assert x.grad is not None and torch.all(x.grad[~keep] == 0) and torch.all(x.grad[keep].abs().sum(1) > 0)
    none = aam.detailed(x, labels, torch.zeros(6, dtype=torch.bool))
    assert none.loss.item() == 0.0 and none.loss.requires_grad
    with pytest.raises(ValueError, match="keep"):
        aam.detailed(x, labels, torch.ones(5, dtype=torch.bool))


# ---------------------------------------------------------------- margin warm-up


def test_margin_scheduler_values_at_given_steps() -> None:
    exp = MarginScheduler(final=0.2, hold=100, ramp=200, kind="exp")
    assert [exp(t) for t in (0, 99, 100)] == [0.0, 0.0, 0.0]
    assert exp(200) == pytest.approx(0.2 * (1 - 1e-3**0.5))  # halfway: 96.8% of the way
    assert exp(299) == pytest.approx(0.2 * (1 - 1e-3 ** (199 / 200)))
    assert exp(300) == 0.2 and exp(10_000) == 0.2
    lin = MarginScheduler(final=0.2, initial=0.05, hold=100, ramp=200, kind="linear")
    assert lin(50) == 0.05
    assert lin(200) == pytest.approx(0.125)
    assert lin(250) == pytest.approx(0.1625)
    values = [exp(t) for t in range(0, 400, 7)]
    assert values == sorted(values)
    jump = MarginScheduler(final=0.3, hold=0.5)  # in units of progress
    assert (jump(0.49), jump(0.5)) == (0.0, 0.3)
    with pytest.raises(ValueError):
        MarginScheduler(kind="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MarginScheduler(ramp=-1)


def test_margin_scheduler_apply_sets_the_loss_margin() -> None:
    sched = MarginScheduler(final=0.2, hold=10, ramp=10, kind="linear")
    aam = AAMSoftmax(4, 3)
    assert sched.apply(aam, 15) == pytest.approx(0.1) and aam.margin == pytest.approx(0.1)
    both = AAMPlusSupCon(AAMSoftmax(4, 3), SupConAAM(margin=0.2))
    sched.apply(both, 0)
    assert both.aam.margin == 0.0 and both.supcon.margin == 0.0 and both.margin == 0.0
    both.set_margin(0.2)
    assert both.aam.margin == 0.2 and both.supcon.margin == 0.2


# ---------------------------------------------------------------- sub-centre AAM


def test_subcenter_with_one_centre_and_no_topk_is_plain_aam() -> None:
    x, labels = _randn(7, 5, seed=4), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    aam = AAMSoftmax(5, 4, margin=0.2, scale=30.0)
    sub = SubCenterAAM(5, 4, margin=0.2, scale=30.0, subcenters=1, topk=0)
    with torch.no_grad():
        sub.weight.copy_(aam.weight)
    xa, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, acc_a = aam(xa, labels)
    ls, acc_s = sub(xs, labels)
    torch.testing.assert_close(ls, la)
    assert acc_s.item() == acc_a.item()
    la.backward()
    ls.backward()
    torch.testing.assert_close(xs.grad, xa.grad)
    torch.testing.assert_close(sub.weight.grad, aam.weight.grad)


def test_subcenter_class_cosine_is_max_over_its_centres() -> None:
    sub = SubCenterAAM(embed_dim=2, n_classes=2, subcenters=3, margin=0.0, scale=1.0)
    angles = [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]  # class 0: rows 0-2, class 1: rows 3-5
    with torch.no_grad():
        sub.weight.copy_(torch.tensor([[math.cos(a), math.sin(a)] for a in angles]))
    x = torch.tensor([[math.cos(0.9), math.sin(0.9)]])
    cos = sub.cosine(x)
    assert sub.subcenter_cosine(x).shape == (1, 2, 3)
    assert cos[0, 0].item() == pytest.approx(max(math.cos(0.9 - a) for a in angles[:3]), rel=1e-5)
    assert cos[0, 1].item() == pytest.approx(math.cos(0.1), rel=1e-5)  # nearest: the centre at 1.0


def test_inter_topk_adds_margin_only_to_the_topk_negatives() -> None:
    torch.manual_seed(0)
    sub = SubCenterAAM(embed_dim=6, n_classes=6, margin=0.2, scale=10.0, subcenters=1, topk=2, topk_margin=0.1)
    x, labels = _randn(4, 6, seed=5), torch.tensor([0, 3, 5, 1])
    cos = sub.cosine(x).detach()
    theta = torch.acos(cos.clamp(-1, 1))
    logits = sub.logits(x, labels).detach()
    for i, y in enumerate(labels.tolist()):
        negatives = [j for j in range(6) if j != y]
        hard = sorted(negatives, key=lambda j: -cos[i, j].item())[:2]
        for j in range(6):
            if j == y:
                want = 10.0 * math.cos(theta[i, j].item() + 0.2)
            elif j in hard:
                want = 10.0 * math.cos(theta[i, j].item() - 0.1)  # the penalty: cos(theta - m')
            else:
                want = 10.0 * cos[i, j].item()
            assert logits[i, j].item() == pytest.approx(want, rel=1e-4, abs=1e-4), (i, j)
    # the penalty follows the margin warm-up: half the margin, half m'; no margin, no penalty
    sub.margin = 0.1
    assert sub.effective_topk_margin() == pytest.approx(0.05)
    sub.margin = 0.0
    torch.testing.assert_close(sub.logits(x, labels), 10.0 * sub.cosine(x))
    # the penalty raises the loss against plain AAM with the same margin
    sub.margin = 0.2
    plain = AAMSoftmax(6, 6, margin=0.2, scale=10.0)
    with torch.no_grad():
        plain.weight.copy_(sub.weight)
    assert sub(x, labels)[0].item() > plain(x, labels)[0].item()


def test_dominant_subcenter_keep_mask() -> None:
    # 3 rows, 2 classes x 2 sub-centres; dominant: class 0 -> centre 1, class 1 unknown
    cos_sub = torch.tensor(
        [
            [[0.9, math.cos(math.radians(80))], [0.0, 0.0]],  # 80 deg from dominant: dropped
            [[0.1, math.cos(math.radians(70))], [0.0, 0.0]],  # 70 deg: kept
            [[0.0, 0.0], [-1.0, -1.0]],  # class 1 has no dominant yet: kept
        ]
    )
    keep = dominant_subcenter_keep(cos_sub, torch.tensor([0, 0, 1]), torch.tensor([1, -1]), max_angle_deg=75)
    assert keep.tolist() == [False, True, True]


def test_subcenter_counts_dominant_and_drops_outliers() -> None:
    sub = SubCenterAAM(embed_dim=3, n_classes=2, subcenters=2, margin=0.2)
    with torch.no_grad():  # class 0: e0, e1; class 1: e2, -e2
        sub.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, -1.0]]))
    near_c0_s1 = torch.tensor([[0.1, 1.0, 0.0]] * 5)
    sub.train()
    sub(near_c0_s1, torch.zeros(5, dtype=torch.long))
    assert sub.subcenter_counts.tolist() == [[0, 5], [0, 0]]
    assert sub.dominant().tolist() == [1, -1]
    with torch.no_grad():  # evaluation does not count
        sub(near_c0_s1, torch.zeros(5, dtype=torch.long))
    sub.eval()
    sub(near_c0_s1, torch.zeros(5, dtype=torch.long))
    assert sub.subcenter_counts.sum().item() == 5
    sub.train()
    x = torch.tensor([[1.0, 0.0, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg, 11 deg, class 1
    labels = torch.tensor([0, 0, 1])
    assert sub.detailed(x, labels).kept.all()
    sub.drop_outliers = True
    out = sub.detailed(x, labels, keep=torch.tensor([True, True, False]))
    assert out.kept.tolist() == [False, True, False]
    assert out.loss.item() == pytest.approx(out.per_sample[1].item(), rel=1e-6)
    assert "subcenter_counts" in sub.state_dict()
    seen = []
    sub.reduce_counts = lambda t: seen.append(t.clone()) or t * 2  # as an all-reduce over 2 ranks would
    sub(x, labels)
    assert len(seen) == 1 and seen[0].sum().item() == 3
    assert sub.subcenter_counts.sum().item() == 5 + 3 + 3 + 6


# ---------------------------------------------------------------- SupCon + AAM against SupCon


def _khosla_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon as in Khosla et al.'s reference code (contrast_mode 'all', base_temperature = temperature)."""
    b, v, _ = features.shape
    feats = F.normalize(features, dim=2)
    contrast = torch.cat(torch.unbind(feats, dim=1), dim=0)  # view-major: row v * B + b
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).float().repeat(v, v)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    logits_mask = 1.0 - torch.eye(b * v)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return -mean_log_prob_pos.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_aam_at_margin_zero_is_supcon(seed: int) -> None:
    z, labels = _randn(6, 3, 8, seed=seed), torch.tensor([0, 1, 0, 2, 1, 3])
    want = _khosla_supcon(z, labels, temperature=0.1)
    got = SupConAAM(temperature=0.1, margin=0.0)(z, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    flat = z.transpose(0, 1).reshape(18, 8)  # the same rows stacked as (N, D): order does not matter
    assert SupConAAM(scale=10.0, margin=0.0)(flat, labels.repeat(3)).item() == pytest.approx(want.item(), rel=1e-5)


def test_supcon_aam_margin_raises_the_loss_of_positives() -> None:
    for seed in range(4):
        z, labels = _randn(5, 2, 6, seed=10 + seed).requires_grad_(True), torch.tensor([0, 0, 1, 2, 2])
        losses = [SupConAAM(scale=10.0, margin=m)(z, labels).item() for m in (0.0, 0.1, 0.2, 0.3)]
        assert losses == sorted(losses) and losses[2] > losses[0] + 1e-3
    # the margin pushes positives together: at margin > 0 the gradient pulls same-speaker views closer
    z = _randn(4, 2, 6, seed=20).requires_grad_(True)
    SupConAAM(scale=10.0, margin=0.2)(z, torch.tensor([0, 1, 2, 3])).backward()
    assert z.grad is not None
    step = z.detach() - 0.01 * z.grad
    cos_before = F.cosine_similarity(z[:, 0], z[:, 1]).detach()
    cos_after = F.cosine_similarity(step[:, 0], step[:, 1])
    assert torch.all(cos_after > cos_before)


# ---------------------------------------------------------------- AAM + SupCon


def test_aam_plus_supcon_is_the_weighted_sum_and_keep_drops_items() -> None:
    torch.manual_seed(1)
    aam = AAMSoftmax(8, 4, margin=0.2)
    combo = AAMPlusSupCon(aam, SupConAAM(scale=10.0, margin=0.2), supcon_weight=0.5)
    z, labels = _randn(6, 2, 8, seed=21), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, parts = combo(z, labels)
    aam_loss, acc = aam(z.reshape(12, 8), labels.repeat_interleave(2))
    sc = SupConAAM(scale=10.0, margin=0.2)(z, labels)
    assert loss.item() == pytest.approx(aam_loss.item() + 0.5 * sc.item(), rel=1e-6)
    assert parts["aam"].item() == pytest.approx(aam_loss.item()) and parts["supcon"].item() == pytest.approx(sc.item())
    assert parts["acc"].item() == acc.item() and not parts["aam"].requires_grad
    keep = torch.tensor([True, True, False, True, True, False])
    loss_k, parts_k, out, per_item = combo.detailed(z, labels, keep)
    assert parts_k["supcon"].item() == pytest.approx(SupConAAM(scale=10.0, margin=0.2)(z[keep], labels[keep]).item())
    kept_aam, _ = aam(z[keep].reshape(-1, 8), labels[keep].repeat_interleave(2))
    assert parts_k["aam"].item() == pytest.approx(kept_aam.item())
    assert per_item.shape == (6,) and out.per_sample.shape == (12,)
    assert per_item[2].item() == pytest.approx(out.per_sample[4:6].mean().item())
    # an explicit SupCon input (e.g. gathered from all ranks) replaces the local one
    other = _randn(4, 2, 8, seed=22)
    _, parts_o = combo(z, labels, supcon_z=other, supcon_labels=torch.tensor([0, 0, 1, 1]))
    want = SupConAAM(scale=10.0, margin=0.2)(other, torch.tensor([0, 0, 1, 1]))
    assert parts_o["supcon"].item() == pytest.approx(want.item())
    with pytest.raises(ValueError):
        combo(z.reshape(12, 8), labels)
    default = AAMPlusSupCon(AAMSoftmax(8, 4, margin=0.1, scale=20.0))
    assert (default.supcon.scale, default.supcon.margin) == (20.0, 0.1)


# ---------------------------------------------------------------- gradients at |cos| = 1, bf16


def test_gradients_finite_at_cos_plus_minus_one() -> None:
    w = F.normalize(_randn(4, 6, seed=30), dim=1)
    for loss_fn in (
        AAMSoftmax(6, 4, margin=0.2),
        SubCenterAAM(6, 4, margin=0.2, subcenters=1, topk=2, topk_margin=0.1),
    ):
        with torch.no_grad():
            loss_fn.weight.copy_(w)
        # row 0 is its class weight (cos 1), row 1 the opposite of its class weight (cos -1),
        # row 2 is another class's weight exactly (a top-k negative at cos 1)
        x = torch.stack([w[0], -w[1], w[3]]).clone().requires_grad_(True)
        loss, _ = loss_fn(x, torch.tensor([0, 1, 2]))
        loss.backward()
        assert torch.isfinite(loss) and x.grad is not None and torch.isfinite(x.grad).all()
        assert loss_fn.weight.grad is not None and torch.isfinite(loss_fn.weight.grad).all()
    same = _randn(1, 6, seed=31).repeat(4, 1).requires_grad_(True)  # identical views: cos 1 everywhere
    loss = SupConAAM(margin=0.2)(same, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and same.grad is not None and torch.isfinite(same.grad).all()


def _bf16_cases() -> list[tuple[str, torch.nn.Module, object]]:
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    return [
        ("aam-keep", AAMSoftmax(8, 4), lambda m, z: m(z.reshape(-1, 8)[:6], labels, labels != 2)[0]),
        ("subcenter", SubCenterAAM(8, 4, subcenters=3, topk=2), lambda m, z: m(z.reshape(-1, 8)[:6], labels)[0]),
        ("aam+supcon", AAMPlusSupCon(AAMSoftmax(8, 4)), lambda m, z: m(z, labels)[0]),
    ]


@pytest.mark.parametrize("case", _bf16_cases(), ids=lambda c: c[0])
def test_bf16_autocast_on_cpu(case: tuple) -> None:
    _, module, call = case
    proj = torch.nn.Linear(8, 8)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(8) + 0.01 * _randn(8, 8, seed=99))
        proj.bias.zero_()
    z = _randn(6, 2, 8, seed=40)
    ref = call(module, proj(z))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = proj(z)
        assert feats.dtype == torch.bfloat16
        loss = call(module, feats)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=0.05, abs=0.05)
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


def test_supcon_scale_sets_the_supcon_temperature_apart_from_the_aam_scale() -> None:
    from spkemb.methods.supervised import Supervised

    enc = torch.nn.Linear(4, 8)
    enc.embed_dim = 8  # type: ignore[assignment]
    m = Supervised(enc, labels=[0, 1, 2], loss="aam+supcon-aam", scale=30.0, supcon_scale=10.0)
    assert m.head.aam.scale == 30.0 and m.head.supcon.scale == 10.0  # type: ignore[union-attr]
    default = Supervised(enc, labels=[0, 1, 2], loss="supcon-aam", scale=30.0)
    assert default.head.scale == 10.0  # type: ignore[union-attr]  # SupCon's temperature 0.1, not the AAM's 1/30
    with pytest.raises(ValueError, match="supcon_scale"):
        Supervised(enc, labels=[0, 1], loss="supcon-aam", supcon_scale=0.0)
