"""The loss gate: it drops wrongly labelled samples of a real (tiny) training run, corrects labels,
keeps everything in degenerate epochs, combines DDP ranks' records, and round-trips its state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from spkemb.losses import AAMSoftmax
from spkemb.losses import gate as lg
from spkemb.losses.gate import GateOptions, LossGate, gate_losses


def _noisy_clusters(seed: int = 0, n: int = 500, classes: int = 5, flip_rate: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(classes, 16, generator=g)
    true = torch.arange(n) % classes
    x = centres[true] + torch.randn(n, 16, generator=g)
    noisy = true.clone()
    flip = torch.rand(n, generator=g) < flip_rate
    noisy[flip] = (true[flip] + torch.randint(1, classes, (int(flip.sum()),), generator=g)) % classes
    return x, true, noisy, flip, g


def _train(gate: LossGate, x: torch.Tensor, g: torch.Generator, epochs: int, classes: int = 5) -> list:
    """A linear encoder + AAM softmax, trained on the gate's labels and masks, the gate fitted per epoch."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(16, 8)
    aam = AAMSoftmax(8, classes, margin=0.2, scale=30.0)
    opt = torch.optim.Adam([*enc.parameters(), *aam.parameters()], lr=0.01)
    summaries = []
    for _ in range(epochs):
        for b in torch.randperm(len(x), generator=g).split(50):
            out = aam.detailed(enc(x[b]), gate.labels[b], keep=gate.keep(b))
            gate.record(b, out.per_sample, out.pred, out.conf)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        summaries.append(gate.fit())
    return summaries


def test_gate_drops_wrong_labels_far_more_often_than_right_ones() -> None:
    x, _, noisy, flip, g = _noisy_clusters()
    assert 0.15 < flip.float().mean() < 0.25
    gate = LossGate(noisy, GateOptions(seed=0))
    summaries = _train(gate, x, g, epochs=4)
    assert not summaries[0].gated and summaries[0].kept_fraction == 1.0  # warm-up epoch
    assert all(s.gated for s in summaries[1:])
    dropped = ~gate.kept
    drop_wrong, drop_right = dropped[flip].float().mean().item(), dropped[~flip].float().mean().item()
    assert drop_wrong > 0.9 and drop_right < 0.1, (drop_wrong, drop_right)
    last = summaries[-1]
    assert last.seen == 500 and last.kept == int(gate.kept.sum())
    assert last.kept_fraction == pytest.approx(gate.kept.float().mean().item())
    assert last.low_mean < last.high_mean
    assert set(last.as_dict()) >= {"gate_kept_fraction", "gate_corrected"}


def test_label_correction_repairs_most_flipped_labels() -> None:
    x, true, noisy, flip, g = _noisy_clusters()
    gate = LossGate(noisy, GateOptions(seed=0, correct=True, confidence=0.9, patience=2))
    summaries = _train(gate, x, g, epochs=5)
    assert summaries[1].corrected == 0  # patience: 2 epochs of disagreement before a change
    changed = gate.labels != noisy
    assert sum(s.corrected for s in summaries) == int(changed.sum()) == int(gate.corrected_total)
    assert (gate.labels[changed] == true[changed]).float().mean() > 0.95  # corrections are right
    assert changed[flip].float().mean() > 0.8  # most wrong labels were corrected
    assert (gate.labels == true).float().mean() > 0.95 > (noisy == true).float().mean()


def test_degenerate_epochs_keep_everything() -> None:
    opts = GateOptions(min_samples=32)
    rng = np.random.default_rng(0)
    assert gate_losses(rng.exponential(size=20), opts)[:2][1] is False  # too few
    keep, gated, means = gate_losses(np.full(100, 2.5), opts)  # all equal
    assert keep.all() and not gated and np.isnan(means[0])
    one_mode = rng.normal(3.0, 0.2, size=2000)
    keep, gated, _ = gate_losses(one_mode, opts)  # one mode: BIC prefers 1
    assert keep.all() and not gated
    keep, gated, (low, high) = gate_losses(one_mode, GateOptions(bic_check=False))  # DivideMix: split anyway
    assert gated and 0.2 < keep.mean() < 0.95 and low < 3.0 < high
    bad = rng.exponential(size=100)
    bad[3] = np.nan
    assert gate_losses(bad, opts)[0].all()
    two = np.concatenate([rng.normal(0.5, 0.2, 400), rng.normal(8.0, 0.5, 100)])
    keep, gated, (low, high) = gate_losses(two, opts)
    assert gated and keep[:400].mean() > 0.99 and keep[400:].mean() < 0.01
    assert low == pytest.approx(0.5, abs=0.1) and high == pytest.approx(8.0, abs=0.2)
    gate = LossGate(torch.zeros(10, dtype=torch.long), GateOptions(warmup_epochs=0))
    gate.record(torch.arange(10), torch.arange(10.0))
    assert not gate.fit().gated and gate.kept.all()  # 10 < min_samples


def test_mask_is_monotone_in_the_loss() -> None:
    rng = np.random.default_rng(1)
    # a narrow low mode and a wide high one: the raw posterior would drop losses below the low mean
    losses = np.concatenate([rng.normal(3.0, 0.3, 300), rng.normal(7.0, 2.5, 100), [0.0, 30.0]])
    keep, gated, _ = gate_losses(losses, GateOptions())
    assert gated and keep[-2] and not keep[-1]
    order = np.argsort(losses)
    assert np.all(np.diff(keep[order].astype(int)) <= 0), "kept losses all lie below dropped ones"


def test_records_average_per_item_and_unseen_items_keep_their_decision() -> None:
    gate = LossGate(torch.zeros(100, dtype=torch.long), GateOptions(warmup_epochs=0, min_samples=10))
    idx = torch.arange(100)
    losses = torch.cat([torch.full((80,), 0.1), torch.full((20,), 9.0)]) + 0.01 * torch.rand(100)
    gate.record(idx, losses)
    gate.record(idx[:10], losses[:10] + 20.0)  # recorded twice: the mean (~10) counts, a high loss
    s = gate.fit()
    assert s.seen == 100 and s.gated
    assert gate.kept[10:80].all() and not gate.kept[:10].any() and not gate.kept[80:].any()
    assert gate.count.sum() == 0  # records cleared
    gate.record(idx[50:], torch.cat([torch.full((30,), 0.1), torch.full((20,), 0.1)]) + 0.01 * torch.rand(50))
    gate.fit()
    assert not gate.kept[:10].any()  # not seen: unchanged
    assert gate.keep(torch.tensor([0, 50, 99])).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="losses"):
        gate.record(idx[:3], torch.zeros(4))
    with pytest.raises(ValueError):
        LossGate([0, -1])
    with pytest.raises(ValueError):
        GateOptions(threshold=1.0)


def test_correction_needs_patience_confidence_and_one_class() -> None:
    opts = GateOptions(warmup_epochs=0, min_samples=1000, correct=True, confidence=0.9, patience=2)
    gate = LossGate(torch.zeros(4, dtype=torch.long), opts)

    def epoch(pred: list[int], conf: list[float], items: list[int] | None = None) -> int:
        idx = torch.tensor(items if items is not None else [0, 1, 2, 3])
        gate.record(idx, torch.ones(len(idx)), torch.tensor(pred), torch.tensor(conf))
        return gate.fit().corrected

    # item 0: confident class 2 twice -> relabelled; item 1: class 1 then class 3 -> not yet;
    # item 2: confident then unsure -> streak reset; item 3: agrees with its label
    assert epoch([2, 1, 1, 0], [0.95, 0.95, 0.95, 0.99]) == 0
    assert epoch([2, 3, 1, 0], [0.95, 0.95, 0.5, 0.99]) == 1
    assert gate.labels.tolist() == [2, 0, 0, 0] and gate.kept.all()
    assert epoch([2, 3, 1, 0], [0.99, 0.95, 0.5, 0.99]) == 1  # item 1's second epoch of class 3
    assert gate.labels.tolist() == [2, 3, 0, 0]
    assert epoch([1], [0.95], items=[2]) == 0
    assert epoch([0, 0, 0], [0.1, 0.1, 0.1], items=[0, 1, 3]) == 0  # item 2 not seen: streak kept
    assert epoch([1], [0.95], items=[2]) == 1
    # two records of one item in an epoch that disagree with each other: no verdict
    gate2 = LossGate(torch.zeros(1, dtype=torch.long), opts)
    for _ in range(2):
        gate2.record(torch.tensor([0, 0]), torch.ones(2), torch.tensor([1, 2]), torch.tensor([0.95, 0.95]))
        gate2.fit()
    assert gate2.labels.tolist() == [0]


def test_fit_combines_the_ranks_records(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    losses = torch.from_numpy(np.concatenate([rng.normal(0.5, 0.2, 160), rng.normal(8, 0.5, 40)]))
    perm = torch.from_numpy(rng.permutation(200))
    labels = torch.zeros(200, dtype=torch.long)
    opts = GateOptions(warmup_epochs=0)
    alone, a, b = LossGate(labels, opts), LossGate(labels, opts), LossGate(labels, opts)
    alone.record(torch.arange(200), losses)
    a.record(perm[:100], losses[perm[:100]])  # rank 0's half
    b.record(perm[100:], losses[perm[100:]])  # rank 1's half

    def fit_as_rank(me: LossGate, other: LossGate) -> None:
        theirs = {name: buf.clone() for name, buf in other.named_buffers()}
        names = {id(buf): name for name, buf in me.named_buffers()}

        def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
            return t.add_(theirs[names[id(t)]])

        monkeypatch.setattr(lg.dist_, "all_reduce", all_reduce)
        me.fit()

    snapshot_a = LossGate(labels, opts)
    snapshot_a.load_state_dict(a.state_dict())
    fit_as_rank(a, b)
    fit_as_rank(b, snapshot_a)
    monkeypatch.undo()
    alone.fit()
    assert torch.equal(a.kept, alone.kept) and torch.equal(b.kept, alone.kept)
    assert 0 < int((~alone.kept).sum()) < 200


def test_state_round_trips_through_weights_only_load() -> None:
    x, _, noisy, _, g = _noisy_clusters(seed=3, n=200)
    opts = GateOptions(seed=0, correct=True)
    gate = LossGate(noisy, opts)
    _train(gate, x, g, epochs=3)
    gate.record(torch.arange(5), torch.rand(5), torch.zeros(5, dtype=torch.long), torch.ones(5))  # mid-epoch
    buf = io.BytesIO()
    torch.save(gate.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = LossGate(torch.zeros(200, dtype=torch.long), opts)
    restored.load_state_dict(state)
    for name, tensor in gate.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    assert int(restored.epochs_fitted) == 3
    more = torch.rand(200, generator=torch.Generator().manual_seed(4)) * 5
    for gt in (gate, restored):
        gt.record(torch.arange(200), more)
    s1, s2 = gate.fit(), restored.fit()
    assert s1 == s2 and torch.equal(gate.kept, restored.kept)
