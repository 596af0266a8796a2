"""The shape of the house (issue 7): options stated once and documented truly, registries, no package
cycles, small functions and modules. These fail when a change breaks the rules, not only the code."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from spkemb.augment.options import AugmentOptions
from spkemb.methods import list_methods, method_class
from spkemb.models.registry import encoder_class, list_encoders
from spkemb.train.config import TrainConfig
from spkemb.train.data import DataOptions
from spkemb.utils.discover import encoder_names, method_names

ROOT = Path(__file__).parents[2]
PKG = ROOT / "spkemb"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def test_registries_match_what_the_command_line_reads_from_the_source() -> None:
    assert method_names() == list_methods()
    assert method_names("pretrain") == list_methods("pretrain") == ["cel", "dino", "moco", "simclr"]
    assert method_names("finetune") == list_methods("finetune") == ["supervised"]
    assert encoder_names() == list_encoders()


def test_both_registries_normalise_names_and_discover_alike() -> None:
    from spkemb.methods.registry import METHODS
    from spkemb.models.registry import ENCODERS
    from spkemb.registry import Registry

    assert isinstance(METHODS, Registry) and isinstance(ENCODERS, Registry)
    assert method_class(" SimCLR ") is method_class("simclr")
    assert encoder_class("WavLM_MHFA") is encoder_class("wavlm-mhfa")
    assert METHODS.names() == method_names() and ENCODERS.names() == encoder_names()


@pytest.mark.parametrize("name", list_methods())
def test_every_method_states_its_options_once(name: str) -> None:
    cls = method_class(name)
    assert cls.Options is not None and cls.Options.describe(), name
    for doc in cls.Options.describe():
        assert doc.help, f"{name}.{doc.name} has no help text"
    assert cls.__init__.__code__.co_varnames[:3] == ("self", "encoder", "options")


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_states_its_options_once(name: str) -> None:
    cls = encoder_class(name)
    docs = cls.Options.describe()  # type: ignore[attr-defined]
    assert docs and all(d.help for d in docs), name


def _documented_keys(text: str, mapping: str) -> list[tuple[str, str]]:
    """``(owner, key)`` of ``mapping: {key: ..., ...}`` examples in a docstring or config text."""
    found = []
    for m in re.finditer(rf"{mapping}:\s*\{{([^}}]*)\}}", text):
        for key in re.findall(r"(\w+)\s*:", m.group(1)):
            found.append((mapping, key))
    return found


def _example_texts() -> list[tuple[str, str]]:
    texts = [(p.name, p.read_text()) for p in sorted((ROOT / "examples" / "configs").glob("*.yaml"))]
    texts.append(("README.md", (ROOT / "README.md").read_text()))
    for p in sorted(PKG.rglob("*.py")):
        texts.append((str(p.relative_to(ROOT)), p.read_text()))
    return texts


@pytest.mark.parametrize("where, text", _example_texts(), ids=lambda x: x if len(x) < 60 else "")
def test_documented_and_example_options_are_real_fields(where: str, text: str) -> None:
    """Every ``method_options`` / ``encoder_kwargs`` / ``data_options`` example names real fields."""
    method = re.search(r"^\s*#?\s*method:\s*(\w+)", text, re.M)
    encoder = re.search(r"^\s*#?\s*encoder:\s*([\w-]+)", text, re.M)
    for _mapping, key in _documented_keys(text, "method_options"):
        name = method.group(1) if method else "simclr"
        assert key in method_class(name).Options.field_names(), f"{where}: {name} has no option {key!r}"
    for _mapping, key in _documented_keys(text, "encoder_kwargs"):
        name = encoder.group(1) if encoder else "ecapa"
        assert key in encoder_class(name).Options.field_names(), f"{where}: {name} has no option {key!r}"  # type: ignore[attr-defined]
    for _mapping, key in _documented_keys(text, "data_options"):
        assert key in DataOptions.field_names(), f"{where}: data_options has no {key!r}"


def test_readme_lists_the_real_config_keys_and_data_options() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("**Training configs**") :]
    block = block[: block.index("\n\n")]
    keys = re.findall(r"`(\w+)`", block[: block.index("command-line options override")])
    fields = set(TrainConfig.field_names())
    assert set(keys) <= fields, set(keys) - fields
    for name in AugmentOptions.field_names() + ["disjoint_crops"]:
        assert f"`{name}`" in block, f"README misses data option {name}"


def test_config_yaml_of_each_example_round_trips() -> None:
    for p in sorted((ROOT / "examples" / "configs").glob("*.yaml")):
        data = yaml.safe_load(p.read_text())
        assert set(data) <= set(TrainConfig.field_names()), p.name


# -- package structure ------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Top-level spkemb packages/modules that ``path`` imports (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spkemb"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(parts[1])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("spkemb."))
    return out


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).parts
        unit = rel[0].removesuffix(".py")
        graph.setdefault(unit, set()).update(_imports(p) - {unit})
    return graph


def test_no_package_level_import_cycles() -> None:
    graph = _package_graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, f"import cycles: {sorted({' -> '.join(c) for c in cycles})[:5]}"


def _house_figures() -> Any:
    spec = importlib.util.spec_from_file_location("house_figures", ROOT / "benchmarks" / "house_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_level_import_cycles() -> None:
    """No two modules import each other, directly or around a loop, lazy imports included (a lazy
    import hides a cycle from Python, not from a reader)."""
    figures = _house_figures()
    graph = figures.module_graph()
    assert "spkemb.scoring.space" in graph["spkemb.scoring.norm"]  # the graph sees real edges
    assert figures.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert figures.cycles(graph) == []


def test_cli_defaults_are_rendered_from_the_option_classes() -> None:
    """The training commands type no ``[default: ...]`` by hand, and the defaults the CLI reads from
    the source of torch-importing modules are the classes' own."""
    from spkemb.cli.params import LOSSES
    from spkemb.methods.supervised import LOSSES as REAL_LOSSES
    from spkemb.methods.supervised import SupervisedOptions
    from spkemb.utils.discover import option_defaults

    assert _house_figures().hand_typed_defaults() == []  # every CLI value default is rendered
    assert LOSSES == REAL_LOSSES
    read = option_defaults("methods/supervised.py", "SupervisedOptions")
    real = SupervisedOptions.defaults()
    assert read and all(real[k] == v for k, v in read.items())
    assert option_defaults("train/data.py", "DataOptions") == {"disjoint_crops": DataOptions().disjoint_crops}


#: core strings that may name a flag: (path, flag) -> why no option field can be named instead
FLAG_NAMED_ON_PURPOSE = {
    ("spkemb/models/wavlm_weights.py", "--init"): "finetune's flag, named from pretrain too (no init field there)",
    ("spkemb/scoring/scores_io.py", "--id-prefix"): "prepare's flag in score's hint (score has no id_prefix)",
    ("spkemb/train/config.py", "--config"): "a comment line of the written config.yaml, not a message",
}


def test_core_messages_name_option_fields_not_cli_flags(tmp_path: Path) -> None:
    """Below the CLI a message names an option field (`` `n_clusters` ``); the CLI shows its flag
    (:func:`spkemb.cli.errors.cli_message`). A ``--flag`` in a core message reads wrong from Python."""
    figures = _house_figures()
    fake = tmp_path / "spkemb"
    (fake / "cli").mkdir(parents=True)
    (fake / "cli" / "x.py").write_text('raise InputError("--cli-may")\n')
    (fake / "core.py").write_text(
        '"""A docstring may say --doc."""\n'
        "def f(x):\n"
        '    ap.add_argument("--own-argparse")\n'
        '    raise InputError(f"--n-clusters {x} is bad")\n'
        'def g():\n    warnings.warn("use --old")\n    return ValueError("--p" + "x")\n'
        'TABLE = {"k": "--table"}\n'
    )
    found, elsewhere = figures.core_flag_strings(fake)
    assert sorted(w.split(":", 1)[1] for w in found) == ["4 --n-clusters", "6 --old", "7 --p"]
    assert elsewhere == ["spkemb/core.py:8 --table"]
    real, real_elsewhere = figures.core_flag_strings()
    named = [w for w in real + real_elsewhere if not _on_purpose(w)]
    assert not named, f"core messages naming a CLI flag (name the field in backticks): {named}"


def _on_purpose(where: str) -> bool:
    path, _, flags = where.partition(" ")
    return all((path.split(":")[0], flag) in FLAG_NAMED_ON_PURPOSE for flag in flags.split())


def test_nothing_below_the_cli_imports_it_or_rich() -> None:
    for p in PKG.rglob("*.py"):
        if p.relative_to(PKG).parts[0] in ("cli", "__main__.py"):
            continue
        text = p.read_text()
        assert "cli" not in _imports(p), f"{p} imports the CLI"
        assert not re.search(r"^\s*(from rich|import rich)", text, re.M), f"{p} imports rich"


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function body, without its docstring."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def test_functions_and_modules_are_small() -> None:
    too_long = []
    for p in PKG.rglob("*.py"):
        tree = ast.parse(p.read_text())
        code_lines = _code_lines(p, tree)
        if code_lines > MAX_MODULE_LINES:
            too_long.append(f"{p.relative_to(ROOT)}: {code_lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and p.parent.name != "cli":
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{p.relative_to(ROOT)}:{node.name}: {n} lines")
    assert not too_long, too_long


def _code_lines(path: Path, tree: ast.Module) -> int:
    """Lines of a module less its docstrings (module, class and function docstrings do not count)."""
    lines = path.read_text().count("\n")
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                lines -= (body[0].end_lineno or body[0].lineno) - body[0].lineno + 1
    return lines
