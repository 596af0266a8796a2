"""DET plots and score histograms are valid images; several systems share one plot; scores files in."""

from __future__ import annotations

import json
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spkemb.cli.app import app
from spkemb.errors import InputError
from spkemb.scoring.plots import PlotSystem, check_plot_path, det_figure, histogram_figure

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _system(name: str, n: int, sep: float, seed: int) -> PlotSystem:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(np.int8)
    return PlotSystem(name, rng.normal(size=n) + sep * labels, labels)


def test_det_png_and_svg_are_valid_images() -> None:
    systems = [_system("good", 3000, 3.0, 0), _system("poor", 3000, 1.0, 1)]
    png = det_figure(systems, "png")
    assert _png_size(png) == (550, 560)
    root = ET.fromstring(det_figure(systems, "svg"))
    assert root.tag.endswith("svg")
    text = "".join(root.itertext())
    assert "good" in text and "poor" in text  # the legend names both systems
    assert det_figure(systems, "pdf")[:5] == b"%PDF-"


def test_det_of_many_trials_is_thinned() -> None:
    svg = det_figure([_system("big", 200_000, 2.0, 2)], "svg")
    assert len(svg) < 300_000  # 200k DET points would be several MB of path data


def test_histograms_one_panel_per_system() -> None:
    one = histogram_figure([_system("a", 500, 2.0, 3)], "png")
    two = histogram_figure([_system("a", 500, 2.0, 3), _system("b", 500, 1.0, 4)], "png")
    (w1, h1), (w2, h2) = _png_size(one), _png_size(two)
    assert w1 == w2 and h2 > h1


def test_plot_path_must_name_a_format() -> None:
    assert check_plot_path("x/det.SVG") == "svg"
    with pytest.raises(InputError, match="must end in"):
        check_plot_path("det.jpg")


@pytest.fixture
def scores_files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, sep, seed in (("ours", 3.0, 5), ("theirs", 1.5, 6)):
        s = _system(name, 400, sep, seed)
        lines = [
            f"e{i} t{i} {x:.5f} {'target' if lab else 'nontarget'}"
            for i, (x, lab) in enumerate(zip(s.scores, s.labels, strict=True))
        ]
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("\n".join(lines) + "\n")
    paths["unlabelled"] = tmp_path / "unlabelled.txt"
    paths["unlabelled"].write_text("a b 0.5\nc d 0.1\n")
    return paths


def test_cli_compares_scores_files_on_one_plot(scores_files: dict[str, Path], tmp_path: Path) -> None:
    det, hist = tmp_path / "det.png", tmp_path / "hist.svg"
    r = runner.invoke(
        app,
        [
            "score",
            "--scores",
            str(scores_files["ours"]),
            "--scores",
            str(scores_files["theirs"]),
            "--det",
            str(det),
            "--hist",
            str(hist),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert [s["name"] for s in summary["systems"]] == ["ours.txt", "theirs.txt"]
    assert summary["name"] == "ours.txt" and summary["eer"] < summary["systems"][1]["eer"]
    assert _png_size(det.read_bytes()) == (550, 560)
    assert ET.fromstring(hist.read_bytes()).tag.endswith("svg")
    assert "ours.txt: EER" in r.stderr and "theirs.txt: EER" in r.stderr


def test_cli_plot_bad_inputs_write_nothing(scores_files: dict[str, Path], tmp_path: Path) -> None:
    det = tmp_path / "det.png"
    r = runner.invoke(app, ["score", "--scores", str(scores_files["ours"]), "--det", str(tmp_path / "det.gif")])
    assert r.exit_code == 2 and "must end in" in r.stderr
    r = runner.invoke(
        app,
        [
            "score",
            "--scores",
            str(scores_files["ours"]),
            "--scores",
            str(scores_files["unlabelled"]),
            "--det",
            str(det),
        ],
    )
    assert r.exit_code == 2 and "labelled" in r.stderr and not det.exists()
    r = runner.invoke(app, ["score", "--scores", str(scores_files["ours"]), "--det", str(scores_files["ours"])])
    assert r.exit_code == 2 and "input" in r.stderr
