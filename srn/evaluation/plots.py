"""The evaluation plots: PR curves (WIDER FACE, AFW, PASCAL Face) and the FDDB ROC, as image files.

This is the package's only module that imports matplotlib, and only when a plot is drawn. Figures
use the Agg canvas directly (no pyplot, so no global figure state and no display), and are
written with :func:`srn.atomic.atomic_save_figure`: a killed run never leaves a torn PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from srn.atomic import atomic_save_figure

if TYPE_CHECKING:
    from srn.evaluation.facebox import FaceboxResult
    from srn.evaluation.fddb import FddbResult
    from srn.evaluation.labels import LabelsResult
    from srn.evaluation.widerface import WiderResult

__all__ = ["plot_facebox_pr", "plot_fddb_roc", "plot_labels_pr", "plot_wider_pr"]


def _axes(xlabel: str, ylabel: str, xlim: tuple[float, float], ylim: tuple[float, float]) -> tuple[Any, Any]:
    """A 6 x 5 in figure at 120 dpi with one gridded axes: ``(figure, axes)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, ax: Any, legend_loc: str, title: str, path: str | os.PathLike[str]) -> Path:
    ax.legend(loc=legend_loc)
    ax.set_title(title)
    return atomic_save_figure(fig, path)


def plot_wider_pr(result: WiderResult, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """The PR curve of each setting (easy, medium, hard), labelled with its AP."""
    fig, ax = _axes("Recall", "Precision", (0, 1), (0, 1.01))
    for setting, (precision, recall) in result.pr.items():
        ok = ~np.isnan(precision)  # no proposal passes these thresholds
        ax.plot(recall[ok], precision[ok], label=f"{setting}: AP {result.ap[setting]:.4f}")
    kind = "official" if result.official else "NOT official"
    return _save(fig, ax, "lower left", title or f"WIDER FACE val ({kind}, IoU {result.iou_threshold:g})", path)


def plot_facebox_pr(result: FaceboxResult, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """The AFW or PASCAL Face PR curve, labelled with its AP."""
    fig, ax = _axes("Recall", "Precision", (0, 1), (0, 1.01))
    ax.plot(result.recall, result.precision, label=f"AP {result.ap:.4f}")
    return _save(fig, ax, "lower left", title or f"{result.num_images} images, {result.num_faces} faces", path)


def plot_fddb_roc(
    result: FddbResult, path: str | os.PathLike[str], max_false_positives: float = 2000, title: str | None = None
) -> Path:
    """The discrete and continuous FDDB ROC (true-positive rate against the false-positive count)."""
    fig, ax = _axes("False positives", "True positive rate", (0, max_false_positives), (0, 1.0))
    for tpr, label, continuous in (
        (result.tpr_discrete, "discrete", False),
        (result.tpr_continuous, "continuous", True),
    ):
        at = result.tpr_at(1000, continuous=continuous)
        ax.plot(result.false_positives, tpr, label=f"{label}: {at:.4f} at 1000 FP")
    ax.axvline(1000, color="gray", linestyle=":", linewidth=1)
    return _save(fig, ax, "lower right", title or f"FDDB ({result.num_images} images, {result.num_faces} faces)", path)


def plot_labels_pr(result: LabelsResult, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """The PR curve of one's own labels at IoU 0.5, all faces (with a point at each of the result's
    score thresholds) and per face size (thin lines)."""
    fig, ax = _axes("Recall", "Precision", (0, 1), (0, 1.01))
    curve = result.curve
    ax.plot(curve["recall"], curve["precision"], color="black", linewidth=2, label=f"all: AP@0.5 {result.by_size['all']['ap50']:.4f}")
    for name, size_curve in result.size_curves.items():
        if result.by_size[name]["faces"]:
            ax.plot(size_curve["recall"], size_curve["precision"], linewidth=1, label=f"{name} px: {result.by_size[name]['ap50']:.4f}")
    for t in result.thresholds:
        above = curve["scores"] >= t
        if above.any():
            last = int(np.flatnonzero(above)[-1])
            ax.plot([curve["recall"][last]], [curve["precision"][last]], "o", color="black", markerfacecolor="none" if t != result.thresholds[0] else "black",
                    label=f"all, score {t:g}")
    return _save(fig, ax, "lower left", title or f"{result.num_images} images, {result.num_faces} faces", path)
