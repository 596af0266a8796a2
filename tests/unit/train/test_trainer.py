"""The Trainer, its config, schedule, sampler and checkpoints, on a toy method (CPU, a few steps)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import pickle
import socket
from pathlib import Path

import pytest
import torch
from ddp_worker import ToyData, ToyMethod, run_rank

from spkemb.data.sampler import EpochIndex, ResumableSampler, item_rng
from spkemb.errors import InputError, WorkError
from spkemb.train import TrainConfig, Trainer, dump_config, load_config, merge_config
from spkemb.train.checkpoint import find_resume_checkpoint, list_checkpoints, load_checkpoint
from spkemb.train.schedule import lr_at, progress


def toy_cfg(**kw: object) -> TrainConfig:
    base = dict(
        method="toy",
        device="cpu",
        batch_size=4,
        lr=0.05,
        warmup_steps=2,
        max_steps=8,
        checkpoint_every=4,
        keep_checkpoints=3,
        log_every=1,
        seed=7,
        weight_decay=0.01,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def metrics_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_is_bit_exact(tmp_path: Path, num_workers: int) -> None:
    data = ToyData(n=20)  # 5 batches an epoch: 8 steps cross an epoch boundary
    cfg = toy_cfg(num_workers=num_workers)

    torch.manual_seed(0)
    straight = ToyMethod()
    exported: list[Path] = []
    summary = Trainer(straight, data, None, cfg, tmp_path / "a", export_encoder=exported.append).fit()
    assert summary["steps"] == 8 and exported == [tmp_path / "a" / "encoder.pt"]

    torch.manual_seed(0)
    crashing = ToyMethod(crash_at=6)  # checkpoint at 4, metrics logged up to 5, dies in step 6
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashing, data, None, cfg, tmp_path / "b").fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [4]

    torch.manual_seed(99)  # a different initialisation: everything must come from the checkpoint
    resumed = ToyMethod()
    summary = Trainer(resumed, data, None, cfg, tmp_path / "b").fit(resume=True)
    assert summary["steps"] == 8 and summary["resumed_from"].endswith("step-00000004.pt")

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert int(b["updates"]) == 8
    ca = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000008.pt")
    cb = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000008.pt")
    for k, v in ca["optimizer"]["state"].items():
        for name, t in v.items():
            assert torch.equal(t, cb["optimizer"]["state"][k][name])
    assert ca["sampler"] == cb["sampler"] and ca["sampler"]["epoch"] == 1
    assert metrics_steps(tmp_path / "b") == list(range(1, 9))
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    for x, y in zip(la, lb, strict=True):
        x, y = json.loads(x), json.loads(y)
        assert (x["loss"], x["lr"], x["epoch"]) == (y["loss"], y["lr"], y["epoch"])


def test_refuses_to_overwrite_and_resume_at_the_end_is_a_no_op(tmp_path: Path) -> None:
    cfg = toy_cfg(max_steps=2, checkpoint_every=10)
    Trainer(ToyMethod(), ToyData(n=8), None, cfg, tmp_path).fit()
    with pytest.raises(InputError, match="already holds checkpoints"):
        Trainer(ToyMethod(), ToyData(n=8), None, cfg, tmp_path).fit()
    summary = Trainer(ToyMethod(), ToyData(n=8), None, cfg, tmp_path).fit(resume=True)
    assert summary["steps"] == 2
    assert metrics_steps(tmp_path) == [1, 2]
    assert yaml_load(tmp_path / "config.yaml")["max_steps"] == 2


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_corrupt_newest_checkpoint_falls_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = toy_cfg(max_steps=4, checkpoint_every=2)
    Trainer(ToyMethod(), ToyData(n=16), None, cfg, tmp_path).fit()
    newest = tmp_path / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # cut short, as by a full disk
    capsys.readouterr()
    found = find_resume_checkpoint(tmp_path / "checkpoints")
    assert found is not None and found[0].name == "step-00000002.pt" and found[1]["step"] == 2
    err = capsys.readouterr().err
    assert "checkpoints/step-00000004.pt is corrupt (" in err and "resuming from step-00000002.pt" in err

    summary = Trainer(ToyMethod(), ToyData(n=16), None, cfg, tmp_path).fit(resume=True)
    assert summary["resumed_from"].endswith("step-00000002.pt") and summary["steps"] == 4
    assert "is corrupt" in capsys.readouterr().err
    assert load_checkpoint(newest)["step"] == 4  # rewritten whole
    assert metrics_steps(tmp_path) == [1, 2, 3, 4]


def test_time_budget_survives_resume(tmp_path: Path) -> None:
    cfg = toy_cfg(max_steps=None, max_minutes=0.001, checkpoint_every=1000, keep_checkpoints=1)
    first = Trainer(ToyMethod(), ToyData(n=16), None, cfg, tmp_path).fit()
    assert first["steps"] >= 1 and first["elapsed_s"] >= 0.06
    state = load_checkpoint(first["checkpoint"])
    assert state["step"] == first["steps"] and state["elapsed"] >= 0.06
    cfg.max_minutes = (state["elapsed"] + 0.1) / 60  # a longer budget: the run goes on for ~0.1 s
    second = Trainer(ToyMethod(), ToyData(n=16), None, cfg, tmp_path).fit(resume=True)
    assert second["steps"] > first["steps"] and second["elapsed_s"] >= state["elapsed"] + 0.1
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, second["steps"] + 1))
    assert lines[first["steps"]]["elapsed"] >= state["elapsed"]  # the clock carried on, not restarted


def test_nan_loss_is_a_work_error_and_saves_nothing(tmp_path: Path) -> None:
    cfg = toy_cfg(max_steps=6, checkpoint_every=2)
    with pytest.raises(WorkError, match=r"diverged.*step 3 .*step-00000002\.pt"):
        Trainer(ToyMethod(nan_at=3), ToyData(n=16), None, cfg, tmp_path).fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]


# ---------------------------------------------------------------------------------------------
# DDP


def test_ddp_two_gloo_processes(tmp_path: Path) -> None:
    """Two ranks on the CPU (gloo), environment as torchrun sets it; forked so torch is not re-imported."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=run_rank, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    h0 = (tmp_path / "hash-0.txt").read_text().split()
    h1 = (tmp_path / "hash-1.txt").read_text().split()
    assert h0 == h1  # same weights, EMA teacher, queue, step count and skipped count on both ranks
    assert h0[1] == "5" and int(h0[2]) >= 1
    saved = sorted(p.name for p in tmp_path.glob("saved-by-*"))
    assert saved == ["saved-by-rank0-step2", "saved-by-rank0-step4", "saved-by-rank0-step5"]
    exp = tmp_path / "exp"
    assert [s for s, _ in list_checkpoints(exp / "checkpoints")] == [2, 4, 5]
    assert metrics_steps(exp) == [1, 2, 3, 4, 5]
    state = load_checkpoint(exp / "checkpoints" / "step-00000005.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    said = (tmp_path / "messages-0.txt").read_text()
    assert "distributed: 2 processes (gloo, cpu); batch 4 per process, 8 per step" in said
    assert "distributed:" not in (tmp_path / "messages-1.txt").read_text()  # only rank 0 speaks


# ---------------------------------------------------------------------------------------------
# unreadable items, precision


def test_none_items_are_skipped_and_counted(tmp_path: Path) -> None:
    data = ToyData(n=16, bad=(0, 3, 9))
    summary = Trainer(ToyMethod(), data, None, toy_cfg(max_steps=8), tmp_path).fit()
    assert summary["steps"] == 8
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 9))
    assert lines[-1]["skipped_items"] == summary["skipped_items"] == 6  # 3 bad items x 2 epochs
    assert all(x["skipped_items"] <= y["skipped_items"] for x, y in zip(lines, lines[1:], strict=False))
    assert {"loss", "lr", "crops_per_s", "elapsed", "epoch", "queue_norm"} <= lines[0].keys()


def test_all_items_unreadable_is_a_work_error(tmp_path: Path) -> None:
    with pytest.raises(WorkError, match="unreadable"):
        Trainer(ToyMethod(), ToyData(n=8, bad=tuple(range(8))), None, toy_cfg(), tmp_path).fit()


def test_bf16_on_cpu(tmp_path: Path) -> None:
    summary = Trainer(ToyMethod(), ToyData(n=8), None, toy_cfg(max_steps=3, precision="bf16"), tmp_path).fit()
    assert summary["steps"] == 3 and math.isfinite(summary["loss"])


def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        Trainer(ToyMethod(), ToyData(n=8), None, toy_cfg(precision="fp16"), tmp_path).fit()


# ---------------------------------------------------------------------------------------------
# config


def test_config_yaml_toml_overrides_and_unknown_keys(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(
        "method: dino\nbatch-size: 32\nlr: 1e-3\nmax_steps: 100\nmethod_options: {local_crops: 4, teacher_temp: 0.04}\n"
    )
    t = tmp_path / "c.toml"
    t.write_text('method = "moco"\nbatch_size = 16\nmax_minutes = 30\n[method_options]\nqueue_size = 1024\n')
    cy = merge_config(load_config(y), {}, source=y)
    assert (cy.method, cy.batch_size, cy.lr, cy.max_steps) == ("dino", 32, 0.001, 100)
    ct = merge_config(load_config(t), {"batch_size": None, "lr": 0.5, "method_options": {"temperature": 0.2}}, source=t)
    assert (ct.method, ct.batch_size, ct.lr, ct.max_minutes) == ("moco", 16, 0.5, 30.0)
    assert ct.method_options == {"queue_size": 1024, "temperature": 0.2}
    with pytest.raises(InputError, match="method 'moco': unknown key 'queue'") as err:  # before any work
        merge_config(load_config(t), {"method_options": {"queue": 8}}, source=t)
    assert err.value.path == str(t)
    with pytest.raises(InputError, match="encoder 'ecapa': unknown key 'chanels'"):
        merge_config({"max_steps": 1}, {"encoder_kwargs": {"chanels": 8}})
    with pytest.raises(InputError, match="data_options: unknown key 'noize'"):
        merge_config({"max_steps": 1}, {"data_options": {"noize": ["x"]}})
    over = merge_config(load_config(y), {"batch_size": 8, "precision": "bf16", "device": "cpu"}, source=y)
    assert (over.batch_size, over.precision, over.device) == (8, "bf16", "cpu")

    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 10\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match="learning_rate") as err:
        merge_config(load_config(bad), {}, source=bad)
    assert err.value.path == str(bad)
    with pytest.raises(InputError, match="precision"):
        merge_config({"max_steps": 1, "precision": "fp8"}, {}, source=y)
    with pytest.raises(InputError, match="max_steps or max_minutes"):
        merge_config({}, {})
    broken = tmp_path / "broken.toml"
    broken.write_text("method = \n")
    with pytest.raises(InputError, match="cannot parse"):
        load_config(broken)

    dump_config(over, tmp_path / "config.yaml")
    again = merge_config(load_config(tmp_path / "config.yaml"), {}, source=tmp_path / "config.yaml")
    assert again == over


# ---------------------------------------------------------------------------------------------
# schedule


def test_schedule_warmup_then_cosine() -> None:
    kw = dict(base_lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=14)
    assert [lr_at(s, 0.0, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # type: ignore[arg-type]
    assert lr_at(4, 0.0, **kw) == pytest.approx(1.0)  # type: ignore[arg-type]
    assert lr_at(9, 0.0, **kw) == pytest.approx(0.55)  # half-way down the cosine  # type: ignore[arg-type]
    assert lr_at(14, 0.0, **kw) == pytest.approx(0.1)  # type: ignore[arg-type]
    assert lr_at(20, 0.0, **kw) == pytest.approx(0.1)  # type: ignore[arg-type]
    # time-bounded: progress = elapsed / budget
    assert lr_at(100, 30.0, base_lr=1.0, max_minutes=1.0) == pytest.approx(0.5)
    assert progress(100, 30.0, None, 1.0) == pytest.approx(0.5)
    # both bounds: whichever is further along
    assert lr_at(5, 45.0, base_lr=1.0, max_steps=10, max_minutes=1.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.75))
    )
    assert progress(8, 6.0, 10, 1.0) == pytest.approx(0.8)


# ---------------------------------------------------------------------------------------------
# sampler


def test_sampler_splits_ranks_and_resumes() -> None:
    ranks = [ResumableSampler(22, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    epoch0 = [list(s) for s in ranks]
    assert [len(b) for b in epoch0] == [3, 3]
    flat = [int(i) for b in epoch0 for batch in b for i in batch]
    assert len(flat) == len(set(flat)) == 18
    assert all(isinstance(i, EpochIndex) and i.epoch == 0 for i in epoch0[0][0])

    s = ResumableSampler(22, 3, seed=5)
    full = [list(map(int, b)) for b in s]
    s.mark_consumed(2)
    state = s.state_dict()
    t = ResumableSampler(22, 3, seed=5)
    t.load_state_dict(state)
    assert [list(map(int, b)) for b in t] == full[2:]
    t.mark_consumed(len(full) - 2)
    nxt = [b for b in t]
    assert nxt[0][0].epoch == 1 and [list(map(int, b)) for b in nxt] != full
    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(22, 4, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="no batch"):
        ResumableSampler(3, 4, seed=0)
    again = pickle.loads(pickle.dumps(EpochIndex(7, 3)))  # as sent to DataLoader workers
    assert again == 7 and again.epoch == 3 and [10, 11, 12, 13, 14, 15, 16, 17][again] == 17
    assert (item_rng(1, 2, 3).random(4) == item_rng(1, 2, 3).random(4)).all()
    assert (item_rng(1, 2, 3).random(4) != item_rng(1, 3, 3).random(4)).all()


def test_compile_keeps_state_dict_keys_and_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile: true`` compiles the encoder in place: same keys and (here) the same weights as eager.
    The eager backend checks the plumbing without paying for an inductor build in the test suite."""
    original = torch.nn.Module.compile
    compiled: list[torch.nn.Module] = []

    def eager_compile(self: torch.nn.Module, *args: object, **kwargs: object) -> None:
        compiled.append(self)
        original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    results = {}
    for flag in (False, True):
        torch.manual_seed(0)
        method = ToyMethod()
        Trainer(method, ToyData(n=8), None, toy_cfg(max_steps=3, compile=flag), tmp_path / str(flag)).fit()
        results[flag] = method.state_dict()
    assert len(compiled) == 1 and compiled[0] is method.encoder
    assert results[True].keys() == results[False].keys()
    for k, v in results[False].items():
        torch.testing.assert_close(results[True][k], v, msg=k)
    assert yaml_load(tmp_path / "True" / "config.yaml")["compile"] is True
    with pytest.raises(InputError, match="compile: expected true or false"):
        merge_config({"compile": "yes"}, {"max_steps": 1})


def test_trainer_calls_before_optimizer_step_between_backward_and_step(tmp_path: Path) -> None:
    seen: list[tuple[int, bool]] = []

    class Hooked(ToyMethod):
        def before_optimizer_step(self, step: int) -> None:
            seen.append((step, self.encoder[0].weight.grad is not None))
            self.scale.grad = None  # held still, as DINO holds its prototypes

    method = Hooked()
    scale = method.scale.detach().clone()
    Trainer(method, ToyData(n=8), None, toy_cfg(max_steps=3), tmp_path).fit()
    assert seen == [(0, True), (1, True), (2, True)]
    assert torch.equal(method.scale.detach(), scale)


def test_sigint_checkpoints_the_step_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGINT before the first scheduled checkpoint: the step finishes, a checkpoint is written, the
    run raises TrainingInterrupted; --resume then gives the weights of a run never interrupted."""
    import os
    import signal

    from spkemb.train.trainer import TrainingInterrupted

    class Interrupted(ToyMethod):
        def after_step(self, step: int, total_steps: int | None) -> None:
            super().after_step(step, total_steps)
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    data = ToyData(n=20)
    cfg = toy_cfg(checkpoint_every=100)
    torch.manual_seed(0)
    straight = ToyMethod()
    Trainer(straight, data, None, cfg, tmp_path / "a").fit()
    torch.manual_seed(0)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3") as err:
        Trainer(Interrupted(), data, None, cfg, tmp_path / "b").fit()
    assert err.value.checkpoint is not None and err.value.checkpoint.name == "step-00000003.pt"
    assert not (tmp_path / "b" / "encoder.pt").exists()
    torch.manual_seed(99)
    resumed = ToyMethod()
    Trainer(resumed, data, None, cfg, tmp_path / "b").fit(resume=True)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_full_disk_while_checkpointing_is_one_work_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from torch.save (a RuntimeError there) becomes one WorkError naming the folder; earlier
    checkpoints stay, and a resume after freeing space finishes the run."""
    import spkemb.train.trainer as trainer_mod

    real = trainer_mod.save_checkpoint
    calls = {"n": 0}

    def full_disk(state, ckpt_dir, step, keep):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                "data/0: file write failed"
            )
        return real(state, ckpt_dir, step, keep)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", full_disk)
    cfg = toy_cfg(max_steps=8, checkpoint_every=2)
    with pytest.raises(WorkError, match=r"cannot write the checkpoint of step 4 .*earlier checkpoints are intact"):
        Trainer(ToyMethod(), ToyData(n=16), None, cfg, tmp_path).fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real)
    assert Trainer(ToyMethod(), ToyData(n=16), None, cfg, tmp_path).fit(resume=True)["steps"] == 8


def test_a_trained_encoder_without_checkpoints_is_not_replaced(tmp_path: Path) -> None:
    """Issue 8 item 4: checkpoints/ removed, encoder.pt kept: refused unless --overwrite."""
    import shutil

    Trainer(ToyMethod(), ToyData(n=8), None, toy_cfg(), tmp_path, export_encoder=lambda p: p.write_text("enc")).fit()
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(InputError, match="already holds a trained encoder.pt"):
        Trainer(ToyMethod(), ToyData(n=8), None, toy_cfg(), tmp_path).fit()
    assert (tmp_path / "encoder.pt").read_text() == "enc"
    Trainer(
        ToyMethod(), ToyData(n=8), None, toy_cfg(overwrite=True), tmp_path, export_encoder=lambda p: p.write_text("new")
    ).fit()
    assert (tmp_path / "encoder.pt").read_text() == "new"


def test_checkpoints_are_also_written_by_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_minutes: a checkpoint once that much training time passed since the last one."""
    import spkemb.train.trainer as trainer_mod

    clock = {"t": 0.0}
    monkeypatch.setattr(trainer_mod.time, "monotonic", lambda: clock["t"])

    class Slow(ToyMethod):
        def after_step(self, step: int, total_steps: int | None) -> None:
            super().after_step(step, total_steps)
            clock["t"] += 40.0  # each step "takes" 40 s

    Trainer(Slow(), ToyData(n=16), None, toy_cfg(checkpoint_every=1000, checkpoint_minutes=2.0), tmp_path).fit()
    # the time is read before each step (all ranks agree on it): 120 s are reached before step 4, the
    # next 120 s (from the save at 160 s) before step 8, the end of the run
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 8]
