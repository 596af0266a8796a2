"""The shipped example configs must load, validate and name only options their method takes."""

from pathlib import Path

import pytest

from spkemb.methods import method_options
from spkemb.models import build_encoder
from spkemb.train.config import load_config, merge_config

CONFIGS = sorted((Path(__file__).parents[3] / "examples" / "configs").glob("*.yaml"))


def test_there_are_configs_for_every_method() -> None:
    names = {p.stem for p in CONFIGS}
    for m in ("moco", "simclr", "cel", "dino"):
        assert {m, f"{m}-cpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path: Path) -> None:
    data = load_config(path)
    cfg = merge_config(data, {} if "max_steps" in data else {"max_minutes": 1}, source=path)
    unknown = set(cfg.method_options) - set(method_options(cfg.method))
    assert not unknown, f"{path.name}: unknown method options {unknown}"
    assert build_encoder(cfg.encoder, **cfg.encoder_kwargs).embed_dim > 0
