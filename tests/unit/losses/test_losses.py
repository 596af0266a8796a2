"""Losses against hand-computed values and naive reference implementations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from spkemb.losses import (
    AAMSoftmax,
    AngularPrototypical,
    CELoss,
    DINOHead,
    DINOLoss,
    InfoNCE,
    NTXent,
    SupConAAM,
    Uniformity,
    add_angular_margin,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


# ---------------------------------------------------------------- InfoNCE / NT-Xent


def test_infonce_equals_cross_entropy_on_explicit_logits() -> None:
    q, k, queue = _randn(4, 8, seed=1), _randn(4, 8, seed=2), _randn(10, 8, seed=3)
    t = 0.07
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ nn_.t()], dim=1) / t
    expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    # scaling the inputs must not matter: they are normalised inside
    got = InfoNCE(temperature=t)(3.0 * q, k, 0.5 * queue)
    torch.testing.assert_close(got, expected)


def test_infonce_without_queue_uses_in_batch_keys() -> None:
    q, k = _randn(5, 6, seed=4), _randn(5, 6, seed=5)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / 0.2
    expected = F.cross_entropy(logits, torch.arange(5))
    torch.testing.assert_close(InfoNCE(0.2)(q, k), expected)


def test_infonce_hand_value() -> None:
    q = torch.eye(4)
    queue = -torch.eye(4)  # for each query: one antipodal negative, three orthogonal ones
    t = 0.5
    loss = InfoNCE(t)(q, q.clone(), queue)
    # positive logit 1/T, negatives: one at -1/T, three at 0
    hand = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(-1 / t) + 3.0))
    assert loss.item() == pytest.approx(hand, rel=1e-5)


def test_ntxent_equals_naive_double_loop() -> None:
    b, t = 3, 0.1
    z1, z2 = _randn(b, 5, seed=6), _randn(b, 5, seed=7)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(2 * b) if j != i)
        total += -math.log(num / den)
    expected = total / (2 * b)
    got = NTXent(temperature=t)(z1, z2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # symmetric in the two views
    assert NTXent(t)(z2, z1).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- uniformity


def test_uniformity_identical_vectors_is_zero() -> None:
    z = torch.ones(4, 3)
    z.requires_grad_(True)
    loss = Uniformity(t=2.0)(z)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_uniformity_orthogonal_and_antipodal_hand_values() -> None:
    # orthogonal unit vectors: ||zi - zj||^2 = 2 for every pair -> log exp(-2t) = -2t
    assert Uniformity(t=2.0)(torch.eye(3)).item() == pytest.approx(-4.0, abs=1e-5)
    # antipodal pair: ||z1 - z2||^2 = 4 -> -4t
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert Uniformity(t=2.0)(z).item() == pytest.approx(-8.0, abs=1e-5)
    # mixed: {e1, e1, -e1}: pairs with sq distances 0, 4, 4 -> log((1 + 2 e^{-4t}) / 3)
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    hand = math.log((1 + 2 * math.exp(-8.0)) / 3)
    assert Uniformity(t=2.0)(z).item() == pytest.approx(hand, rel=1e-5)


# ---------------------------------------------------------------- angular prototypical / CEL


def test_angular_prototypical_2x2_hand_case() -> None:
    # speaker 0: query e1, other crops e1 and (1,1) -> prototype direction (2,1)/sqrt5
    # speaker 1: query e2, other crop e2 -> prototype e2
    x = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]],
            [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],
        ]
    )
    w, b = 10.0, -5.0
    s5 = math.sqrt(5.0)
    cos = [[2 / s5, 0.0], [1 / s5, 1.0]]  # rows: queries, cols: prototypes
    logits = [[w * c + b for c in row] for row in cos]
    hand = 0.0
    for i in range(2):
        hand += -logits[i][i] + math.log(sum(math.exp(v) for v in logits[i]))
    hand /= 2
    loss_fn = AngularPrototypical(init_scale=w, init_bias=b)
    assert loss_fn(x).item() == pytest.approx(hand, rel=1e-5)


def test_angular_prototypical_scale_clamped_and_learnable() -> None:
    loss_fn = AngularPrototypical()
    with torch.no_grad():
        loss_fn.w.fill_(-3.0)  # clamped to 1e-6: all logits ~ b -> log(N)
    x = _randn(3, 2, 4, seed=8)
    assert loss_fn(x).item() == pytest.approx(math.log(3), abs=1e-4)
    loss_fn = AngularPrototypical()
    loss_fn(x).backward()
    assert loss_fn.w.grad is not None and loss_fn.b.grad is not None


def test_cel_combines_parts() -> None:
    x = _randn(3, 2, 4, seed=9)
    cel = CELoss(lambda_u=0.5, lambda_s=2.0, t=2.0)
    loss, parts = cel(x)
    lu = Uniformity(2.0)(x.reshape(6, 4))
    ls = AngularPrototypical()(x)
    torch.testing.assert_close(parts["uniformity"], lu)
    torch.testing.assert_close(parts["angular_prototypical"], ls)
    torch.testing.assert_close(loss, 0.5 * lu + 2.0 * ls)


# ---------------------------------------------------------------- DINO


def test_dino_uniform_outputs_give_log_k() -> None:
    k, b = 8, 3
    loss_fn = DINOLoss(out_dim=k, n_global=2)
    student = [torch.zeros(b, k) for _ in range(4)]
    teacher = torch.zeros(2 * b, k)
    assert loss_fn(student, teacher).item() == pytest.approx(math.log(k), rel=1e-6)
    # stacked-tensor input gives the same
    assert loss_fn(torch.zeros(4 * b, k), teacher).item() == pytest.approx(math.log(k), rel=1e-6)


def test_dino_matches_naive_pairs_and_skips_same_view() -> None:
    k, b = 5, 2
    loss_fn = DINOLoss(out_dim=k, n_global=2, teacher_temp=0.05, student_temp=0.1)
    loss_fn.center.copy_(_randn(1, k, seed=10))
    student = [_randn(b, k, seed=20 + i) for i in range(3)]
    teacher = [_randn(b, k, seed=30 + i) for i in range(2)]
    total, pairs = 0.0, 0
    for ti in range(2):
        p = F.softmax((teacher[ti] - loss_fn.center) / 0.05, dim=-1)
        for si in range(3):
            if si == ti:
                continue
            total += float((-(p * F.log_softmax(student[si] / 0.1, dim=-1)).sum(-1)).mean())
            pairs += 1
    assert pairs == 4
    assert loss_fn(student, teacher).item() == pytest.approx(total / pairs, rel=1e-5)


def test_dino_update_center_is_ema() -> None:
    k = 4
    loss_fn = DINOLoss(out_dim=k, center_momentum=0.9)
    old = _randn(1, k, seed=11)
    loss_fn.center.copy_(old)
    teacher = _randn(6, k, seed=12)
    loss_fn(torch.zeros(6, k), teacher)  # forward leaves the centre alone
    torch.testing.assert_close(loss_fn.center, old)
    loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, 0.9 * old + 0.1 * teacher.mean(0, keepdim=True))
    assert "center" in loss_fn.state_dict()


def test_dino_head_shapes_weight_norm_and_copy() -> None:
    head = DINOHead(in_dim=6, out_dim=10, hidden=8, bottleneck=4, n_layers=3)
    y = head(_randn(3, 6, seed=13))
    assert y.shape == (3, 10)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    # the last layer's rows have unit norm, and the input to it is unit-norm: |logit| <= 1
    assert y.abs().max().item() <= 1.0 + 1e-5
    y.sum().backward()
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    teacher = copy.deepcopy(head)  # DINO's teacher is a copy of the student
    torch.testing.assert_close(teacher(torch.ones(2, 6)), head(torch.ones(2, 6)))
    free = DINOHead(in_dim=6, out_dim=10, hidden=8, bottleneck=4, n_layers=1, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert free(torch.ones(2, 6)).shape == (2, 10)


# ---------------------------------------------------------------- AAM softmax


def test_aam_margin_zero_is_plain_softmax_and_margin_increases_loss() -> None:
    x, labels = _randn(6, 5, seed=14), torch.tensor([0, 1, 2, 3, 0, 1])
    aam = AAMSoftmax(embed_dim=5, n_classes=4, margin=0.0, scale=30.0)
    cos = F.normalize(x, dim=1) @ F.normalize(aam.weight, dim=1).t()
    expected = F.cross_entropy(30.0 * cos, labels)
    loss0, acc = aam(x, labels)
    torch.testing.assert_close(loss0, expected)
    assert acc.item() == pytest.approx((cos.argmax(1) == labels).float().mean().item())
    aam.margin = 0.2  # settable at run time
    loss2, acc2 = aam(x, labels)
    assert loss2.item() > loss0.item()
    assert acc2.item() == acc.item()  # accuracy is margin-free


def test_aam_margin_hand_value() -> None:
    aam = AAMSoftmax(embed_dim=2, n_classes=2, margin=0.3, scale=10.0)
    with torch.no_grad():
        aam.weight.copy_(torch.eye(2))
    theta = 0.4
    x = torch.tensor([[math.cos(theta), math.sin(theta)]])
    loss, acc = aam(x, torch.tensor([0]))
    t_logit = 10.0 * math.cos(theta + 0.3)
    o_logit = 10.0 * math.sin(theta)
    hand = -t_logit + math.log(math.exp(t_logit) + math.exp(o_logit))
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    assert acc.item() == 1.0


def test_add_angular_margin_fallback_and_gradient() -> None:
    cos = torch.tensor([1.0, 0.5, -0.99, -1.0], requires_grad=True)
    out = add_angular_margin(cos, 0.2)
    theta = math.acos(0.5)
    assert out[1].item() == pytest.approx(math.cos(theta + 0.2), rel=1e-5)
    # past pi - m the fallback cos - m sin m keeps it decreasing in theta
    assert out[3].item() == pytest.approx(-1.0 - 0.2 * math.sin(0.2), rel=1e-5)
    out.sum().backward()
    assert torch.isfinite(cos.grad).all()
    easy = add_angular_margin(torch.tensor([-0.5, 0.5]), 0.2, easy_margin=True)
    assert easy[0].item() == pytest.approx(-0.5)


# ---------------------------------------------------------------- SupCon + AAM


def _naive_supcon(z: torch.Tensor, labels: list[int], scale: float, margin: float) -> float:
    z = F.normalize(z, dim=1)
    n = len(labels)
    losses = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue

        def logit(a: int, i: int = i) -> float:
            c = float(z[i] @ z[a])
            if a != i and labels[a] == labels[i]:
                c = math.cos(math.acos(max(-1.0, min(1.0, c))) + margin)
            return scale * c

        den = sum(math.exp(logit(a)) for a in range(n) if a != i)
        losses.append(-sum(logit(p) - math.log(den) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_supcon_margin_zero_equals_naive() -> None:
    z, labels = _randn(7, 4, seed=15), [0, 0, 1, 1, 1, 2, 3]  # 2 and 3 have no positive: skipped
    got = SupConAAM(scale=5.0, margin=0.0)(z, torch.tensor(labels))
    assert got.item() == pytest.approx(_naive_supcon(z, labels, 5.0, 0.0), rel=1e-5)
    # temperature is 1 / scale
    got_t = SupConAAM(temperature=0.2, margin=0.0)(z, torch.tensor(labels))
    assert got_t.item() == pytest.approx(got.item(), rel=1e-6)


def test_supcon_margin_matches_naive_and_increases_loss() -> None:
    z, labels = _randn(6, 4, seed=16), [0, 0, 1, 1, 2, 2]
    loss_fn = SupConAAM(scale=5.0, margin=0.2)
    got = loss_fn(z, torch.tensor(labels))
    assert got.item() == pytest.approx(_naive_supcon(z, labels, 5.0, 0.2), rel=1e-4)
    loss_fn.margin = 0.0
    assert loss_fn(z, torch.tensor(labels)).item() < got.item()


def test_supcon_views_input_and_no_positive() -> None:
    z = _randn(3, 2, 4, seed=17)  # 3 examples x 2 views, each example its own class
    flat_labels = [0, 0, 1, 1, 2, 2]
    got = SupConAAM(scale=5.0, margin=0.1)(z)
    assert got.item() == pytest.approx(_naive_supcon(z.reshape(6, 4), flat_labels, 5.0, 0.1), rel=1e-4)
    lonely = _randn(3, 4, seed=18).requires_grad_(True)
    loss = SupConAAM()(lonely, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()


# ---------------------------------------------------------------- all: gradients and bf16 autocast


def _cases() -> list[tuple[str, torch.nn.Module, object]]:
    def emb(*shape: int, seed: int) -> torch.Tensor:
        return _randn(*shape, seed=seed)

    return [
        (
            "infonce",
            InfoNCE(),
            lambda m, x: m(x[0], x[1], x[2]),
            (emb(4, 8, seed=1), emb(4, 8, seed=2), emb(16, 8, seed=3)),
        ),
        ("ntxent", NTXent(), lambda m, x: m(x[0], x[1]), (emb(4, 8, seed=4), emb(4, 8, seed=5))),
        ("uniformity", Uniformity(), lambda m, x: m(x[0]), (emb(6, 8, seed=6),)),
        ("angproto", AngularPrototypical(), lambda m, x: m(x[0]), (emb(4, 3, 8, seed=7),)),
        ("cel", CELoss(), lambda m, x: m(x[0])[0], (emb(4, 3, 8, seed=8),)),
        ("dino", DINOLoss(out_dim=8), lambda m, x: m(x[0], x[1]), (emb(12, 8, seed=9), emb(6, 8, seed=10))),
        ("aam", AAMSoftmax(8, 5), lambda m, x: m(x[0], torch.tensor([0, 1, 2, 3]))[0], (emb(4, 8, seed=11),)),
        ("supcon", SupConAAM(), lambda m, x: m(x[0], torch.tensor([0, 0, 1, 1, 2])), (emb(5, 8, seed=12),)),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_backward_and_bf16_autocast(case: tuple) -> None:
    _, module, call, inputs = case
    # a bf16 linear layer in front, as under autocast the encoder hands bf16 embeddings to the loss
    proj = torch.nn.Linear(8, 8)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(8) + 0.01 * _randn(8, 8, seed=99))
        proj.bias.zero_()
    ref = call(module, tuple(proj(x) for x in inputs))
    assert ref.dtype == torch.float32 and torch.isfinite(ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = tuple(proj(x) for x in inputs)
        assert all(f.dtype == torch.bfloat16 for f in feats)
        loss = call(module, feats)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=0.05, abs=0.05)
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()
    assert proj.weight.grad.abs().sum() > 0
