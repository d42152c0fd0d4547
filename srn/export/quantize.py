"""Static int8 quantisation of an exported SRN: QDQ format, per-channel weights, calibrated on real photos.

The input is a raw-layout file from :func:`srn.export.onnx.export_onnx` (graph input ``images``,
Tensor[N, 3, H, W] float32 RGB in [0, 1], normalisation inside the graph). onnxruntime's
``quantize_static`` inserts ``QuantizeLinear``/``DequantizeLinear`` pairs around the convolutions and
the ops between them (Add, Concat, Resize, the output reshapes), which onnxruntime then runs as
integer kernels:

- weights: signed int8, one scale per output channel (``DequantizeLinear`` with ``axis=0`` and a
  scale vector as long as the convolution has output channels);
- activations: 8-bit with one scale and zero point per tensor, from the min/max that the tensor
  reaches on the calibration photos (``CalibrationMethod.MinMax``).

Calibration photos are prepared as :class:`srn.inference.Detector` prepares an image for this
graph: decoded to RGB ``uint8``, resized with antialiasing (here so that the longer side is
``input_size``, up or down: one fixed moderate size keeps calibration fast), divided by 255, and padded
bottom/right with the normalisation mean (0 after the graph's normalisation), as the Detector pads
a batch. Unreadable photos are skipped and counted.

The output keeps every ``metadata_props`` entry of the fp32 file, so ``Detector("x.int8.onnx")``
runs it unchanged, and adds ``quantization`` (:data:`QUANTIZATION`) and ``quantization_calibration``
(JSON: photos used and skipped, input size, activation type, calibration method).

Only raw-layout graphs are quantised: in a ``postprocess=True`` graph the decoded box coordinates
and the scores compared with thresholds would be quantised too.

``benchmarks/bench_int8.py`` measures fp32 against int8 on the held-out split (AP and one-thread
latency, in one run).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srn.atomic import atomic_output
from srn.data.image_io import read_image
from srn.errors import ExportError, ImageReadError, MissingDependencyError, one_line
from srn.inference import Detector
from srn.paths import IMAGE_SUFFIXES, check_input_dir, check_output_file

QUANTIZATION = "int8-qdq-per-channel"
QUANTIZATION_KEY = "quantization"
CALIBRATION_KEY = "quantization_calibration"
DEFAULT_CALIBRATION_COUNT = 50
DEFAULT_CALIBRATION_SIZE = 512
ACTIVATION_TYPES = ("quint8", "qint8")
# The key under which srn export onnx stores its metadata (the file format, docs/export.md).
_SRN_METADATA_KEY = "srn"


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_onnx` did.

    Attributes:
        path: the int8 file written.
        calibration_images: photos the calibration ran on.
        skipped: (path, reason) of each photo that could not be read.
        input_size: longer side, in pixels, of every calibration input (inputs are square, padded).
        activation_type: "quint8" or "qint8"; weights are always signed int8, per channel.
        calibrate_method: "minmax" (the only one offered: see :func:`quantize_onnx`).
        fp32_bytes, int8_bytes: file sizes.
    """

    path: Path
    calibration_images: int
    skipped: tuple[tuple[str, str], ...]
    input_size: int
    activation_type: str
    calibrate_method: str
    fp32_bytes: int
    int8_bytes: int


def select_calibration_images(folder: str | Path, count: int = DEFAULT_CALIBRATION_COUNT) -> list[Path]:
    """A deterministic sample of the image files under ``folder`` (recursively, hidden entries left out).

    The files are sorted by their path relative to ``folder``; of ``n`` files, ``count`` evenly spaced
    ones are taken (indices ``i * n // count``), or all of them when ``n <= count``. Nothing is
    decoded here: :func:`quantize_onnx` skips files that turn out unreadable.

    Raises:
        InputPathError: ``folder`` is missing or not a folder.
        ExportError: ``folder`` holds no image file, or ``count`` < 1.
    """
    folder = check_input_dir(folder, "calibration folder")
    if count < 1:
        raise ExportError(f"{folder}: the number of calibration images must be at least 1, got {count}")
    files = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise ExportError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) to calibrate with")
    n = len(files)
    return files if n <= count else [files[i * n // count] for i in range(count)]


def select_listed_images(lists: Sequence[str | Path], count: int = DEFAULT_CALIBRATION_COUNT) -> list[Path]:
    """:func:`select_calibration_images`'s sample, of the images that text files name.

    Every line of a list that ends in an image suffix names an image, relative to the list's folder
    (or absolute); other lines are skipped, so both one path per line and WIDER FACE's annotation
    layout (a path, a count, boxes) work. The images of all lists are sorted by their path as the
    lists write it (relative to the list's folder), and ``count`` evenly spaced ones taken.

    Raises:
        InputPathError: a list is missing or unreadable.
        ExportError: the lists name no image, or ``count`` < 1.
    """
    from srn.paths import check_input_file

    named: dict[str, Path] = {}
    for listing in lists:
        listing = check_input_file(listing, what="calibration list")
        for line in listing.read_text(errors="replace").splitlines():
            line = line.strip()
            if Path(line).suffix.lower() in IMAGE_SUFFIXES:
                named.setdefault(line, listing.parent / line)
    if count < 1:
        raise ExportError(f"{lists[0]}: the number of calibration images must be at least 1, got {count}")
    if not named:
        raise ExportError(f"{', '.join(str(p) for p in lists)}: no image paths to calibrate with")
    files = [named[key] for key in sorted(named)]
    n = len(files)
    return files if n <= count else [files[i * n // count] for i in range(count)]


def read_quantization(path: str | Path) -> dict[str, Any]:
    """What an int8 file from :func:`quantize_onnx` says of its quantisation: the calibration record
    (photos, input size, activation type ...) plus ``"quantization"``.

    Raises:
        ExportError: the file is missing, not a readable ONNX file, or not an int8 file of ours (no
            quantisation record, or no ``QuantizeLinear`` node).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise ExportError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get(QUANTIZATION_KEY) != QUANTIZATION or not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise ExportError(f"{path}: not an int8 model (quantise an fp32 export with 'srn export onnx --int8')")
    try:
        calibration = json.loads(props.get(CALIBRATION_KEY, "{}"))
    except ValueError:
        calibration = {}
    return {"quantization": props[QUANTIZATION_KEY], **(calibration if isinstance(calibration, dict) else {})}


def prepare_calibration_image(path: str | Path, input_size: int, pad_value: Sequence[float]) -> np.ndarray:
    """One photo as the raw graph's input, the way :class:`srn.inference.Detector` prepares it.

    Args:
        input_size: the longer side is resized to this (antialiased, aspect ratio kept); the shorter
            one is padded up to it.
        pad_value: RGB in [0, 1] of the padding: the normalisation mean, which the graph maps to 0.

    Returns:
        batch (np.ndarray[1, 3, input_size, input_size] float32): RGB in [0, 1].

    Raises:
        ImageReadError: the file cannot be read or decoded.
    """
    from torchvision.transforms.v2.functional import resize

    image = read_image(path)  # uint8 (3, H, W)
    height, width = image.shape[-2:]
    scale = input_size / max(height, width)
    size = [max(1, min(input_size, round(height * scale))), max(1, min(input_size, round(width * scale)))]
    # Resized as uint8, then made float, in the Detector's order.
    image = resize(image, size, antialias=True).float().div_(255.0)
    batch = torch.tensor(list(pad_value), dtype=torch.float32).view(1, 3, 1, 1).repeat(1, 1, input_size, input_size)
    batch[0, :, : size[0], : size[1]] = image
    return batch.numpy()


def _calibration_reader(inputs: list[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds the prepared photos one at a time, as ``{input_name: (1, 3, S, S)}``."""

        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self._items = iter(inputs)

    return _Reader()


def _check_fp32(fp32_path: Path) -> tuple[Any, tuple[float, ...]]:
    """The fp32 model as an ONNX proto and the colour its padding takes; errors name the file."""
    import onnx

    if not fp32_path.is_file():
        raise ExportError(f"{fp32_path}: ONNX file not found")
    # The Detector opens it as deployment will: onnxruntime must load it and find srn metadata.
    detector = Detector(fp32_path, device="cpu", threads=1)
    pad_value = tuple(float(v) for v in detector.backend.pad_value().flatten().tolist())
    try:
        proto = onnx.load(str(fp32_path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
        raise ExportError(f"{fp32_path}: not a readable ONNX file ({type(exc).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if _SRN_METADATA_KEY not in props:
        raise ExportError(f"{fp32_path}: no srn metadata; export it with 'srn export onnx'")
    if props.get(QUANTIZATION_KEY):
        raise ExportError(f"{fp32_path}: already quantised ({props[QUANTIZATION_KEY]}); quantise the fp32 file")
    if "num_detections" in {o.name for o in proto.graph.output}:
        raise ExportError(f"{fp32_path}: has post-processing in its graph; int8 quantisation takes a raw-output "
                          "export (without post-processing)")
    return proto, pad_value


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: Sequence[str | Path],
    *,
    input_size: int = DEFAULT_CALIBRATION_SIZE,
    activation_type: str = "quint8",
    reduce_range: bool = False,
) -> QuantizationReport:
    """Write a static int8 (QDQ, per-channel weights) copy of an srn raw-layout ONNX file.

    Args:
        fp32_path: a file from ``srn export onnx`` without post-processing in the graph.
        out_path: the int8 file to write (atomically); ``Detector(out_path)`` runs it.
        calibration_images: the photos to calibrate activation ranges on (see
            :func:`select_calibration_images` for a deterministic sample of a folder). They must not
            come from the data the int8 model is evaluated on.
        input_size: calibration inputs are ``input_size`` x ``input_size`` (longer side resized to it).
        activation_type: "quint8" (asymmetric uint8: onnxruntime's fast U8S8 path on x86, about 2x
            faster than fp32 on one thread) or "qint8" (a little more accurate, but no faster than fp32
            on x86; ``benchmarks/bench_int8.py`` measures both).
        reduce_range: 7-bit weights (onnxruntime's ``reduce_range``), which no int8 kernel clips, at a
            loss of accuracy; the default 8-bit file runs exact everywhere through
            :class:`srn.inference.Detector` (:mod:`srn.inference.int8_kernels`).

    Returns:
        A :class:`QuantizationReport` (photos used and skipped, file sizes).

    Raises:
        ExportError: the input is missing, corrupt, not an srn model, already quantised or
            post-processed; no calibration photo is given; or onnxruntime fails.
        OutputPathError: ``out_path`` cannot be written, or is ``fp32_path``.
        MissingDependencyError: the onnx package is not installed.
        ImageReadError: none of the calibration photos can be read (naming the first).
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MissingDependencyError("int8 quantisation needs onnx: pip install onnx") from None
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if activation_type not in ACTIVATION_TYPES:
        raise ExportError(f"{out_path}: activation type must be one of {', '.join(ACTIVATION_TYPES)}, got {activation_type!r}")
    if input_size < 32:
        raise ExportError(f"{out_path}: the calibration input size must be at least 32, got {input_size}")
    check_output_file(out_path, inputs=[fp32_path])
    proto, pad_value = _check_fp32(fp32_path)
    fp32_props = [(p.key, p.value) for p in proto.metadata_props]
    input_name = proto.graph.input[0].name
    del proto

    paths = [Path(p) for p in calibration_images]
    if not paths:
        raise ExportError(f"{fp32_path}: no calibration images given")
    inputs, skipped = [], []
    for path in paths:
        try:
            inputs.append(prepare_calibration_image(path, input_size, pad_value))
        except ImageReadError as exc:
            skipped.append((str(path), exc.reason))
    if not inputs:
        first, reason = skipped[0]
        rest = "it is the only calibration image" if len(paths) == 1 else f"none of the {len(paths)} calibration images can be read"
        raise ImageReadError(first, f"{reason}; {rest}")

    activation = QuantType.QUInt8 if activation_type == "quint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="srn_quantize_") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "preprocessed.onnx"
        try:
            # Shape inference and graph optimisation first, as onnxruntime recommends: without it
            # the quantiser misses biases that are not initializers yet.
            quant_pre_process(str(fp32_path), str(source))
            quantize_static(
                str(source),
                str(tmp / "int8.onnx"),
                _calibration_reader(inputs, input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
                # MinMax keeps two numbers per tensor; the histogram methods (percentile, entropy)
                # keep every activation of every photo (7 GB for 10 photos at 512) and did not score
                # better on the held-out split.
                calibrate_method=CalibrationMethod.MinMax,
            )
            quantized = onnx.load(str(tmp / "int8.onnx"))
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantiser raises untyped errors
            raise ExportError(f"{fp32_path}: int8 quantisation failed ({type(exc).__name__}: {one_line(str(exc))[:200]})") from None

    calibration = {
        "images": len(inputs),
        "skipped": len(skipped),
        "input_size": input_size,
        "activation_type": activation_type,
        "weight_type": "qint8 per channel" + (", 7 bits" if reduce_range else ""),
        "calibrate_method": "minmax",
    }
    del quantized.metadata_props[:]
    for key, value in [*((k, v) for k, v in fp32_props if k not in (QUANTIZATION_KEY, CALIBRATION_KEY)),
                       (QUANTIZATION_KEY, QUANTIZATION), (CALIBRATION_KEY, json.dumps(calibration, sort_keys=True))]:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_output(out_path) as tmp_out:
        onnx.save(quantized, str(tmp_out))
        # Fail here, not at the first detection, if onnxruntime cannot run what it wrote.
        Detector(tmp_out, device="cpu", threads=1)
    return QuantizationReport(
        path=out_path,
        calibration_images=len(inputs),
        skipped=tuple(skipped),
        input_size=input_size,
        activation_type=activation_type,
        calibrate_method="minmax",
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=out_path.stat().st_size,
    )
