"""DET curves and score histograms with matplotlib (headless: an Agg canvas, no pyplot, no display).

The DET plot draws miss against false-alarm probability on normal-deviate axes (Martin et al.
1997), one curve per system with its EER (circle) and minDCF point (square) marked, and a legend.
Curves are thinned to the points that move at least 1/2000 of the axis span, so a million trials
draw (and save as SVG) as fast as a thousand. matplotlib is imported only here, only when plotting.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkemb.errors import InputError
from spkemb.scoring.metrics import det_points

__all__ = ["PLOT_FORMATS", "PlotSystem", "check_plot_path", "det_axes", "det_figure", "histogram_figure"]

PLOT_FORMATS = ("png", "svg", "pdf")
_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
_LIMITS = (0.0005, 0.85)


@dataclass
class PlotSystem:
    name: str
    scores: np.ndarray
    labels: np.ndarray
    calibrated: bool | None = None  # None: not known (a scores file from elsewhere)

    @property
    def kind(self) -> str:
        """What the scores are, for the histogram's axis."""
        if self.calibrated:
            return "calibrated: log-likelihood ratios (natural log)"
        if self.calibrated is None:
            return "as read from the file; calibration not known"
        return "not calibrated: not log-likelihood ratios"


def check_plot_path(path: str | Path) -> str:
    """The image format named by ``path``'s extension; anything else is an InputError."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise InputError(f"a plot file must end in {', '.join('.' + f for f in PLOT_FORMATS)}", path)
    return fmt


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _render(fig, fmt: str) -> bytes:
    """The figure as ``fmt`` bytes; SVG keeps its text as text (smaller, searchable) and no date."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format=fmt, **({"metadata": {"Date": None}} if fmt == "svg" else {}))
    return buf.getvalue()


def _thin(x: np.ndarray, y: np.ndarray, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the points of a monotone curve that move by at least span/2000 on the grid."""
    q = np.round(np.column_stack([x, y]) / (span / 2000.0))
    keep = np.ones(len(x), dtype=bool)
    keep[1:] = np.any(q[1:] != q[:-1], axis=1)
    keep[-1] = True
    return x[keep], y[keep]


def det_figure(
    systems: Sequence[PlotSystem], fmt: str = "png", p_target: float = 0.01, title: str | None = None
) -> bytes:
    """The DET plot of ``systems`` as image bytes (format ``png``, ``svg`` or ``pdf``)."""
    return _render(det_axes(systems, p_target, title).figure, fmt)


def det_axes(systems: Sequence[PlotSystem], p_target: float = 0.01, title: str | None = None):
    """The DET plot's axes (matplotlib), before rendering. The EER and minDCF markers are not
    clipped: one at an axis limit (no false alarm at the minDCF point) is drawn whole, not halved."""
    from scipy.special import ndtri

    lo, hi = ndtri(np.array(_LIMITS))
    fig = _figure(5.5, 5.2 + 0.2 * len(systems))
    ax = fig.add_subplot()
    for k, sys_ in enumerate(systems):
        c, eer, j = det_points(sys_.scores, sys_.labels, p_target)
        x = np.clip(ndtri(np.clip(c.p_fa, 1e-12, 1.0)), lo, hi)
        y = np.clip(ndtri(np.clip(c.p_miss, 1e-12, 1.0)), lo, hi)
        (line,) = ax.plot(*_thin(x, y, hi - lo), lw=1.6, color=f"C{k}")
        min_dcf = (p_target * c.p_miss[j] + (1 - p_target) * c.p_fa[j]) / min(p_target, 1 - p_target)
        e = float(np.clip(ndtri(max(eer, 1e-12)), lo, hi))
        ax.plot([e], [e], "o", ms=7, mfc="none", color=line.get_color(), clip_on=False, zorder=3)
        ax.plot([x[j]], [y[j]], "s", ms=6, color=line.get_color(), clip_on=False, zorder=3)
        line.set_label(f"{sys_.name}  (EER {100 * eer:.2f} %, minDCF {min_dcf:.3f})")
    ticks = ndtri(np.array(_TICKS))
    labels = [f"{100 * t:g}" for t in _TICKS]
    ax.plot([lo, hi], [lo, hi], color="0.7", lw=0.8, ls=":")
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("False-alarm probability (%)")
    ax.set_ylabel("Miss probability (%)")
    ax.set_title(title or f"DET  (o EER, \u25a0 minDCF at p_target {p_target:g})", fontsize=10)
    ax.grid(True, color="0.88")
    fig.legend(loc="outside lower center", fontsize=8)
    return ax


def histogram_figure(systems: Sequence[PlotSystem], fmt: str = "png", bins: int = 60) -> bytes:
    """Target and non-target score densities, one panel per system, as image bytes."""
    fig = _figure(6.0, 1.2 + 2.0 * len(systems))
    axes = fig.subplots(len(systems), 1, squeeze=False)[:, 0]
    for ax, sys_ in zip(axes, systems, strict=True):
        s = np.asarray(sys_.scores, dtype=np.float64)
        lab = np.asarray(sys_.labels).astype(bool)
        edges = np.histogram_bin_edges(s, bins=bins)
        ax.hist(s[~lab], bins=edges, density=True, alpha=0.55, color="C0", label=f"non-target ({(~lab).sum()})")
        ax.hist(s[lab], bins=edges, density=True, alpha=0.55, color="C3", label=f"target ({lab.sum()})")
        ax.set_title(f"{sys_.name}  (scores {sys_.kind})", fontsize=9)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("calibrated score (LLR)" if all(s.calibrated for s in systems) else "score")
    return _render(fig, fmt)
