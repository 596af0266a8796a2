"""The training side's options: checks at construction, nested gate options (with the old flat keys
still read), typed mappings at merge time, and the command line naming flags where the core names
fields."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from spkemb.cli.errors import cli_message
from spkemb.cli.params import command_flags
from spkemb.cli.training import training_overrides
from spkemb.errors import InputError
from spkemb.losses.gate import GateOptions
from spkemb.methods.supervised import SupervisedOptions
from spkemb.options import Options
from spkemb.train.config import TrainConfig, dump_config, load_config, merge_config, typed_options
from spkemb.train.pretrain import pretrain_config


@pytest.mark.parametrize(
    "values, field",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"device": "tpu"}, "device"),
        ({"max_steps": None}, "max_steps"),
        ({"checkpoint_minutes": 0.0}, "checkpoint_minutes"),
    ],
)
def test_train_config_checks_every_value_when_built(values: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        TrainConfig(**{"max_steps": 1, **values})
    cfg = TrainConfig(max_steps=1, device=" CPU ")
    assert cfg.device == "cpu" and TrainConfig.defaults()["batch_size"] == 64


def test_gate_options_are_an_options_class_nested_in_supervised() -> None:
    assert isinstance(SupervisedOptions().gate, GateOptions) and issubclass(GateOptions, Options)
    assert SupervisedOptions().gate is not SupervisedOptions().gate  # a fresh copy per instance
    o = SupervisedOptions.from_mapping({"gate": {"threshold": 0.7}, "gate.patience": 3, "loss_gate": True})
    assert (o.gate.threshold, o.gate.patience, o.loss_gate) == (0.7, 3, True)
    assert SupervisedOptions.from_mapping(o.to_dict()) == o  # saved nested, read back the same
    with pytest.raises(InputError, match=r"method 'supervised': gate: threshold: must be in \[0, 1\)"):
        SupervisedOptions.from_mapping({"gate": {"threshold": 1.5}}, "method 'supervised'")
    with pytest.raises(InputError, match="gate: unknown key 'treshold'"):
        SupervisedOptions.from_mapping({"gate": {"treshold": 0.5}})


def test_the_old_flat_gate_keys_still_read_with_a_deprecation_warning() -> None:
    old = {"gate_threshold": 0.6, "gate_warmup_epochs": 0, "gate_bic_check": False, "label_correction": True,
           "correction_confidence": 0.8, "correction_patience": 3, "seed": 4}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        o = SupervisedOptions.from_mapping(old)
    said = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert len(said) == 7 and "option 'gate_threshold' is now 'gate.threshold'; the old name will go" in said
    assert o.gate == GateOptions(
        threshold=0.6, warmup_epochs=0, bic_check=False, correct=True, confidence=0.8, patience=3, seed=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cfg = merge_config({"method": "supervised", "max_steps": 1, "method_options": old})
    assert cfg.method_options["gate"]["threshold"] == 0.6 and "gate_threshold" not in cfg.method_options


def test_mappings_are_typed_at_merge_and_saved_plain(tmp_path: Path) -> None:
    cfg = merge_config(
        {"method": "supervised", "max_steps": 2, "method_options": {"gate": {"threshold": 0.6}}},
        {"method_options": {"gate.warmup_epochs": 0}, "encoder_kwargs": {"channels": 8}},
    )
    assert cfg.method_options == {"gate": {"threshold": 0.6, "warmup_epochs": 0}}  # merged key by key
    typed = typed_options(cfg)
    assert typed.method.gate.warmup_epochs == 0 and typed.encoder.channels == 8  # type: ignore[union-attr, attr-defined]
    dump_config(cfg, tmp_path / "config.yaml")
    assert merge_config(load_config(tmp_path / "config.yaml"), {}) == cfg
    with pytest.raises(InputError, match="unknown method 'byol'"):
        merge_config({"method": "byol", "max_steps": 1})
    with pytest.raises(InputError, match="method 'supervised': n_crops: supcon losses need positives"):
        merge_config({"method": "supervised", "max_steps": 1}, {"method_options": {"loss": "supcon-aam", "n_crops": 1}})


def test_pretrain_method_none_needs_no_bound_and_a_finetune_method_is_refused() -> None:
    assert pretrain_config({"method": "none"}, {}).max_steps == 1
    assert pretrain_config({"method": "none", "max_minutes": 2.0}, {}).max_steps is None
    with pytest.raises(InputError, match="unknown method 'supervised'"):
        pretrain_config({"method": "supervised", "max_steps": 1}, {})


def test_the_cli_names_flags_where_the_core_names_fields() -> None:
    from spkemb.cli.finetune import finetune
    from spkemb.cli.pretrain import pretrain

    flags = command_flags(pretrain)
    assert flags["num_workers"] == "--workers" and flags["max_steps"] == "--max-steps"
    assert command_flags(finetune)["gate.correct"] == "--label-correction"
    err = InputError("already holds checkpoints; pass `resume` to continue, `overwrite` to start again", "exp")
    assert (
        cli_message(err, flags)
        == "exp: already holds checkpoints; pass --resume to continue, --overwrite to start again"
    )
    assert cli_message(InputError("max_steps: must be at least 1 (got 0)"), flags).startswith("--max-steps: must")
    assert (
        cli_message(InputError("max_steps: must be at least 1", "c.yaml"), flags)
        == "c.yaml: max_steps: must be at least 1"
    )


def test_training_overrides_route_each_parameter() -> None:
    over = training_overrides(
        {
            "manifest": "m",
            "output": "o",
            "workers": 2,
            "noise": ["n"],
            "speed": True,
            "gain": None,
            "encoder_opt": ["channels=8"],
            "frontend_weights": "w.pt",
            "method_opt": ["margin=0.3"],
            "label_correction": True,
            "loss": None,
            "precision": None,
            "resume": False,
            "overwrite": True,
            "max_steps": 3,
        }  # fmt: skip
    )
    assert over == {
        "num_workers": 2, "max_steps": 3, "precision": None, "resume": None, "overwrite": True,
        "encoder_kwargs": {"channels": 8, "frontend_weights": "w.pt"},
        "method_options": {"margin": 0.3, "gate.correct": True},
        "data_options": {"speed": True, "noise": ["n"]},
    }  # fmt: skip
