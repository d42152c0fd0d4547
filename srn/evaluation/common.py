"""What the three evaluators share: VOC AP, reading their files, detection lines, and JSON.

* :func:`voc_ap` is the one VOC average precision (WIDER FACE, AFW and PASCAL Face use it).
* :func:`load_mat` reads the benchmarks' ``.mat`` files and turns every way one can be wrong into
  one :class:`~srn.errors.AnnotationError` that names the file. Text files (predictions and
  detections) are read by the strict helpers every parser shares, in
  :mod:`srn.data.formats.common` (``read_text``, ``parse_count``, ``parse_finite``), with
  :class:`~srn.errors.PredictionFormatError` as their error.
* :func:`xywh_line` is the ``x y w h score`` line of WIDER FACE and FDDB detection files.
* :func:`jsonable` and :class:`JsonResult` give every result one JSON form, in which a NaN or an
  infinity is ``null``: bare ``NaN`` is not JSON, and strict readers reject it.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from srn.errors import AnnotationError, PredictionFormatError
from srn.paths import check_input_file

__all__ = [
    "AnnotationError",
    "JsonResult",
    "PredictionFormatError",
    "as_numpy",
    "json_text",
    "jsonable",
    "load_mat",
    "require_variables",
    "voc_ap",
    "xywh_line",
]


# --------------------------------------------------------------------------- average precision


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC AP: sentinels, monotone envelope, sum of recall steps times precision.

    NaN precisions (0/0 at thresholds with no proposals) are skipped the way MATLAB's ``max``
    skips NaN.

    Args:
        recall (float64[N]), precision (float64[N]): the PR curve, recall non-decreasing.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


# --------------------------------------------------------------------------- reading files


def _mat_read_errors() -> tuple[type[BaseException], ...]:
    from scipy.io.matlab import MatReadError

    # What scipy's reader raises on truncated, corrupt or foreign bytes (seen on real files cut at
    # random offsets and on random bytes): a short read is an OSError, a bad tag a TypeError, a bad
    # header a ValueError, a broken compressed element a zlib.error, and so on.
    return (
        MatReadError,
        ValueError,
        TypeError,
        OSError,
        EOFError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        NotImplementedError,
        AttributeError,
        struct.error,
        zlib.error,
    )


def load_mat(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The variables of a MATLAB ``.mat`` file, or an :class:`AnnotationError` naming the file.

    Args:
        what: what the file should be, for the messages ("WIDER FACE ground-truth file").
    """
    import scipy.io

    path = check_input_file(path, what=what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about odd headers; the checks below speak
            mat = scipy.io.loadmat(path)
    except _mat_read_errors() as exc:
        size = path.stat().st_size
        # scipy says "index out of range" for a file cut inside the 128-byte MAT-file header
        detail = f"{size} bytes: shorter than a MAT-file header" if size < 128 else str(exc) or type(exc).__name__
        raise AnnotationError(path, None, f"not a readable MATLAB .mat file ({detail})") from None
    return mat


def require_variables(path: Path, mat: Mapping[str, Any], names: Iterable[str], kind: str) -> None:
    """Raise an :class:`AnnotationError` "not a <kind>" unless ``mat`` holds every variable of ``names``."""
    held = sorted(k for k in mat if not k.startswith("__"))
    for name in names:
        if name not in held:
            holds = ", ".join(held) if held else "no variables"
            raise AnnotationError(path, None, f"not a {kind} (no variable {name!r}; it holds {holds})")


# --------------------------------------------------------------------------- detection lines


def as_numpy(x: Any) -> np.ndarray:
    """A float64 numpy copy of an array or a (possibly accelerator) tensor."""
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def xywh_line(box_xyxy: np.ndarray, score: float) -> str:
    """``x y w h score``, the line of WIDER and FDDB detection files."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return f"{x1:.3f} {y1:.3f} {x2 - x1:.3f} {y2 - y1:.3f} {score:.6f}"


# --------------------------------------------------------------------------- JSON


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays and scalars as lists and numbers, tuples as lists, and every
    NaN or infinity as None (JSON ``null``)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def json_text(data: Any) -> str:
    """``data`` as indented JSON text; never a bare NaN or Infinity (``allow_nan=False`` proves it)."""
    return json.dumps(jsonable(data), indent=2, allow_nan=False)


class JsonResult:
    """Mixin of the result classes: :meth:`to_json` from the class's ``to_dict(curves)``."""

    to_dict: Callable[..., dict[str, Any]]

    def to_json(self, curves: bool = True) -> str:
        """The :meth:`to_dict` form as JSON text (NaN and infinities are ``null``)."""
        return json_text(self.to_dict(curves=curves))
