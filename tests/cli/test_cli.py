"""The app as a whole: help, version, placeholders, generated docs."""

import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from spkemb import __version__
from spkemb.cli.app import app
from spkemb.cli.gendocs import main as gendocs_main

runner = CliRunner()
COMMANDS = (
    "prepare",
    "augment",
    "pretrain",
    "finetune",
    "extract",
    "cluster",
    "score",
    "import-model",
    "average-model",
    "export-model",
    "import-embeddings",
)


def test_help_lists_all_seven_subcommands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for c in COMMANDS:
        assert c in res.output


def test_python_dash_m_and_version() -> None:
    res = subprocess.run([sys.executable, "-m", "spkemb", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"spkemb {__version__}"


def test_completions_and_man_pages_are_current() -> None:
    assert gendocs_main(["--check"]) == 0, "run `make docs` to regenerate completions/ and man/"


def test_man_pages_document_every_option() -> None:
    import typer

    from spkemb.cli.gendocs import man_page

    top = typer.main.get_command(app)
    parent = top.context_class(top, info_name="spkemb")
    for name in ("pretrain", "extract", "cluster", "score", "import-model"):
        command = top.commands[name]
        file_name, text = man_page(command, name, parent)
        assert file_name == f"spkemb-{name}.1"
        for param in command.params:
            flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            assert flag.replace("-", r"\-") in text, f"{file_name} misses {flag}"


def test_pretrain_data_flags_reach_the_config(tmp_path: Path, tiny_corpus: Path) -> None:
    manifest = tmp_path / "m.tsv"
    assert runner.invoke(app, ["prepare", str(tiny_corpus), "-o", str(manifest)]).exit_code == 0
    exp = tmp_path / "exp"
    args = [
        "pretrain",
        str(manifest),
        "-o",
        str(exp),
        "--method",
        "cel",
        "--encoder-opt",
        "channels=16",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--speed",
        "--disjoint-crops",
        "--no-gain",
        "--method-opt",
        "crop_seconds=0.5",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = yaml.safe_load((exp / "config.yaml").read_text())["data_options"]
    assert data == {"speed": True, "gain": False, "disjoint_crops": True}
    assert (exp / "encoder.pt").is_file()
