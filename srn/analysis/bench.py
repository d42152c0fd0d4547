"""``srn bench``: SRN against torchvision's RetinaNet-R50-FPN in one run, on one device.

Measured for both models, at each ``--sizes`` entry (W x H):

- latency at batch 1, median over ``--iters`` after ``--warmup`` runs; for SRN split into the
  network's forward and the post-processing, with the post-processing share;
- throughput at ``--batch`` (default 16 on GPU, 2 on CPU) at ``--throughput-size`` (default: the
  first size);
- peak memory: ``torch.cuda.max_memory_allocated`` above the weights on GPU; on CPU the growth of
  the peak RSS (``resource.getrusage``, its peak reset through ``/proc/self/clear_refs`` on Linux);
- FLOPs of one forward (``torch.utils.flop_counter.FlopCounterMode`` on the meta device, 2 FLOPs per
  multiply-add) and the FLOP rate that the measured speed reaches (``tflops``, counted FLOPs over
  time). On a GPU also that rate as a share of a large bf16 matmul measured in the same run
  (``matmul_share``), a yardstick that convolutions rarely beat. On the CPU there is no such share:
  oneDNN's convolutions (Winograd, direct kernels) beat a plain fp32 matmul, so the share passed 100%
  (a "matrix rate reached 166.9%" once), which says nothing about the CPU's peak.

What is measured is the model that ``srn detect`` uses by default (``model="shipped"``), the paper's
SRN-R50 with random weights (``model="srn_r50"``: speed does not depend on the weights' values,
only post-processing does, see below), or ``weights``: an srn checkpoint, the release's ``SRN.pth``,
or an ``.onnx`` file from ``srn export onnx`` (raw layout, fp32 or int8), which the onnxruntime
backend runs as it is.

The peer is ``retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)``: one face
class, which is the 415 GFLOP model (docs/design.md, Network) at 1024x1024 (the COCO default of 91 classes costs 496).
Its internal resize is neutralised by setting ``min_size``/``max_size`` to the input's sides, and it
is timed end to end (transform, network, its own post-processing).

SRN runs through :class:`srn.inference.runner.Runner`, as :class:`srn.inference.Detector` runs it:
``--dtype bf16`` is its bf16 inference copy (BatchNorm folded, bf16 weights, channels_last; outputs
decoded in fp32), ``--cuda-graphs`` captures its network and fixed-shape post-processing as CUDA
graphs (the captures happen during warmup), ``--compile`` wraps its network in ``torch.compile``.
The peer runs under ``torch.autocast`` with ``--dtype bf16``, as torchvision's detection models are
meant to run in reduced precision; ``--channels-last`` applies to both. The peer cannot be graphed or
compiled whole: its post-processing is data-dependent Python.

Inputs are uniform noise unless ``--image`` names a photo, which is then resized to each size (and
repeated for the batch); a trained model on noise finds many weak candidates, so use a photo to
measure the post-processing share of a trained model.

``--backend`` chooses what runs SRN's network; the peer always runs in PyTorch. By default
(``backend=None``) it is what :class:`srn.inference.Detector` runs on that device: on the CPU, for the
shipped model, its int8 copy ``srn/assets/srn_mobilenet_v2.int8.onnx``
(:data:`srn.inference.detector.DEFAULT_CPU_WEIGHTS`) through onnxruntime; for an ``.onnx`` ``weights``
file, onnxruntime; otherwise (a GPU, another model, or settings that only PyTorch honours: bf16,
``torch.compile``, channels_last, CUDA graphs) PyTorch. Without onnxruntime (or without the int8
file) the shipped model falls back to PyTorch on the CPU, as the Detector does, with a one-line
notice through ``log``. The results say what was timed: ``srn_weights`` (the file, None for a random
network), ``srn_backend``, ``srn_exported`` (True where a PyTorch network was exported to a temporary
fp32 ONNX file to be timed), ``quantization`` (the ONNX file's ``quantization`` metadata, e.g.
``"int8-qdq-per-channel"``, else None) and ``exact_int8_weights`` (the weight tensors re-encoded for
exact sums where this CPU's int8 kernel clips, :mod:`srn.inference.int8_kernels`; 0 otherwise).

- ``torch``: the :class:`srn.model.SRN` module, eagerly or through ``torch.compile``.
- ``onnxruntime``: an ``.onnx`` ``weights`` file as it is, or else the PyTorch network exported by
  :func:`srn.export.onnx.export_onnx` (raw layout, normalisation in the graph, traced at the first
  size, fp32: the shipped model's fp32 checkpoint, not its int8 copy) into a temporary folder; run by
  onnxruntime's CPU provider (all graph optimisations, ``--threads`` or torch's thread count within
  an op, one across ops), as :class:`srn.inference.backends.OnnxBackend` runs it. The forward phase is
  ``session.run`` on the float32 [0, 1] images; the post-processing phase converts its outputs with
  :func:`srn.inference.onnx_format.onnx_outputs_to_torch` (which also rebuilds the anchors, as OnnxBackend does on
  every call) and applies the :class:`srn.postprocess.PostProcessor` of the file's metadata. CPU and
  fp32 inputs only, and neither ``--compile`` nor ``--channels-last``; a file must be in the raw layout
  (post-processing outside the graph). Each memory-measured block opens a fresh session, so that its
  peak RSS includes the growth of onnxruntime's memory arena, which a session never gives back. The
  matrix rate is PyTorch's.

FLOPs (and the parameter count) are counted on a PyTorch network: the module itself, or the module
that was exported. An ONNX file's metadata does not describe its whole network (the head's layout,
the number of tower convolutions and separable convolutions are not stored), so for a given
``.onnx`` file they are not counted and are reported as None (null in JSON), as are the FLOP rates
derived from them; only for the shipped int8 file are they counted on the network of the shipped
checkpoint that it was quantised from (``srn/assets/srn_mobilenet_v2.pt`` beside it, when its
backbone and width agree with the file's metadata). Quantisation does not change the multiply-adds,
only their type, so those are the int8 graph's multiply-adds too.

Randomly initialised weights score every anchor near the 0.01 prior, so almost no anchor passes
the candidate threshold and post-processing looks free. ``postprocess_dense`` therefore also times
post-processing on logits drawn from N(0, 2): about half the anchors are candidates and every
level's top-k is full, an upper bound for a crowded photo. Random weights also drive activations of
the std-0.01 layers into float denormals, which a trained model never produces; denormals are
flushed to zero during the CPU run so that they do not dominate the timings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from srn.config import ModelConfig, PostProcessConfig, check_image_size
from srn.errors import ConfigError, printable
from srn.inference import resolve_device
from srn.model.outputs import SRNOutputs
from srn.inference.runner import PRECISIONS, Runner

DTYPES = PRECISIONS  # --dtype names the runner's precisions
BACKENDS = ("torch", "onnxruntime")
MODELS = ("shipped", "srn_r50")


@dataclass(frozen=True)
class BenchConfig:
    """What ``srn bench`` measures; sizes are (height, width)."""

    device: str | None = None  # default: cuda when available
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    warmup: int = 2
    iters: int = 10
    sizes: tuple[tuple[int, int], ...] = ((480, 640), (1024, 1024))
    batch: int | None = None  # throughput batch; None: 16 on GPU, 2 on CPU; 0: skip throughput
    model: str = "shipped"  # one of MODELS: the shipped default model, or a random SRN of backbone and width
    backbone: str = "resnet50"  # model="srn_r50": the random network's backbone and head width
    width: int = 256
    weights: str | None = None  # an srn checkpoint, SRN.pth or .onnx file (srn export onnx, raw layout) instead of model
    peer: bool = True
    peer_classes: int = 2
    matmul_size: int | None = None  # n of the GPU's n x n x n bf16 matmul yardstick; default 8192
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: torch's default
    # what runs SRN's network: "torch", "onnxruntime" (CPU, fp32 inputs), or None: what srn detect runs
    # on that device (the shipped int8 ONNX file through onnxruntime on the CPU; see the module doc)
    backend: str | None = None
    cuda_graphs: bool = False  # SRN's network and post-processing as CUDA graphs (srn.inference.runner)
    image: str | None = None  # a photo, resized to every size, instead of noise
    throughput_size: tuple[int, int] | None = None  # (H, W) of the throughput run; None: the first size


def size_name(size: tuple[int, int]) -> str:
    """(H, W) as the usual "WxH"."""
    return f"{size[1]}x{size[0]}"


# ---------------------------------------------------------------------------------------------
# Clocks, memory, FLOPs, the device's matrix rate
# ---------------------------------------------------------------------------------------------


class _Clock:
    """Marks on the device's timeline: CUDA events on GPU (no host sync between marks), the host
    clock on CPU, where every op has finished when it returns."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3


def _median_ms(clock: _Clock, phases: Callable[[Callable[[], Any]], None], warmup: int, iters: int, count: int) -> list[float]:
    """Median duration of each of ``count`` consecutive phases of one iteration.

    ``phases(mark)`` runs one iteration and calls ``mark()`` before the first phase and after each.
    """
    samples: list[list[float]] = [[] for _ in range(count)]
    for step in range(warmup + iters):
        marks: list[Any] = []
        clock.sync()
        phases(lambda: marks.append(clock.mark()))
        clock.sync()
        if step >= warmup:
            for i in range(count):
                samples[i].append(clock.ms(marks[i], marks[i + 1]))
    return [statistics.median(s) for s in samples]


def _read_rss_kb() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so that memory a previous model freed but
    the allocator kept resident does not hide the next model's growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def peak_memory_mb(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory growth (MB) over the block: CUDA allocator on GPU, RSS on CPU."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize()
        result["mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    _release_free_heap()
    try:
        # Linux: "5" resets the peak RSS that getrusage reports, so each block gets its own peak.
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        base_kb = _read_rss_kb()
    except OSError:
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield result
    result["mb"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024


def matmul_tflops(device: torch.device, n: int | None = None, iters: int | None = None) -> dict[str, Any]:
    """The device's measured dense matrix rate: n x n x n matmuls, bf16 on GPU and fp32 on CPU."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    iters = iters or (20 if cuda else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    clock = _Clock(device)

    def run(mark: Callable[[], Any]) -> None:
        mark()
        for _ in range(iters):
            torch.mm(a, b)
        mark()

    (ms,) = _median_ms(clock, run, warmup=1, iters=3, count=1)
    return {"dtype": "bf16" if cuda else "fp32", "n": n, "tflops": 2 * n**3 * iters / (ms / 1e3) / 1e12}


def count_gflops(build: Callable[[], nn.Module], forward: Callable[[nn.Module, Tensor], Any], size: tuple[int, int]) -> float:
    """GFLOP of one forward at batch 1, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build().eval()
    images = torch.zeros(1, 3, *size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        forward(model, images)
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------------
# The two models
# ---------------------------------------------------------------------------------------------


def _build_srn(config: BenchConfig, device: torch.device) -> tuple[nn.Module, PostProcessConfig, ModelConfig]:
    from srn.inference.detector import DEFAULT_WEIGHTS
    from srn.model import build_model
    from srn.weights import load_model

    weights = config.weights or (DEFAULT_WEIGHTS if config.model == "shipped" else None)
    if weights:
        model, detector_config = load_model(weights, device)
        return model, detector_config.postprocess, detector_config.model
    model_config = ModelConfig(backbone=config.backbone, width=config.width)
    return build_model(model_config).to(device).eval(), PostProcessConfig(), model_config


def _build_peer(config: BenchConfig, size: tuple[int, int]) -> nn.Module:
    from torchvision.models.detection import retinanet_resnet50_fpn

    # min_size/max_size equal to the input's sides: the transform's resize keeps the size (scale 1).
    return retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=config.peer_classes, min_size=min(size), max_size=max(size)
    ).eval()


def _set_peer_size(peer: nn.Module, size: tuple[int, int]) -> None:
    peer.transform.min_size = (min(size),)
    peer.transform.max_size = max(size)


def _dense_logits(outputs: SRNOutputs) -> SRNOutputs:
    """The same outputs with logits from N(0, 2): the worst case for post-processing."""
    gen = torch.Generator(device=outputs.step2_logits[0].device).manual_seed(0)

    def noise(tensors: list) -> list:
        return [None if t is None else torch.randn(t.shape, generator=gen, device=t.device) * 2.0 for t in tensors]

    return outputs._replace(step1_logits=noise(outputs.step1_logits), step2_logits=noise(outputs.step2_logits))


class _TorchSRN:
    """SRN in PyTorch through :class:`srn.inference.runner.Runner`, as :class:`srn.inference.Detector` runs it."""

    def __init__(self, model: nn.Module, post_config: PostProcessConfig, config: BenchConfig) -> None:
        self.model, self.post_config, self.config = model, post_config, config
        self.runner = self._runner()

    def _runner(self, hook: Callable[[SRNOutputs], SRNOutputs] | None = None) -> Runner:
        runner = Runner(self.model, self.post_config, 0.0, self.config.dtype, self.config.cuda_graphs, outputs_hook=hook)
        if self.config.compile and hook is None:
            runner.net = torch.compile(runner.net)
        return runner

    def reset(self) -> None:
        """Nothing to do: PyTorch's CPU allocator keeps no memory between forwards."""

    def phases(self, images: Tensor, dense: bool = False) -> Callable[[Callable[[], Any]], None]:
        runner = self.runner
        if dense:  # the same network, its logits replaced by fixed dense ones (inside the graph)
            fixed = _dense_logits(runner.network(images))
            runner = self._runner(lambda outputs: outputs._replace(step1_logits=fixed.step1_logits, step2_logits=fixed.step2_logits))

        def run(mark: Callable[[], Any]) -> None:
            mark()
            runner(images, mark)
            mark()

        return run


class _OrtNetwork:
    """A raw-layout ONNX file of SRN's network, run by onnxruntime's CPU provider: an existing file
    (:meth:`from_file`) or a PyTorch module exported first (:meth:`from_module`).

    ``__call__`` is ``session.run`` alone; ``to_torch`` turns its outputs into SRN's layout with
    :func:`srn.inference.onnx_format.onnx_outputs_to_torch`, as :class:`srn.inference.backends.OnnxBackend` does.
    """

    def __init__(self, path: Path, threads: int) -> None:
        """Open ``path``; see :meth:`from_file` and :meth:`from_module`."""
        self.path = path
        self.threads = threads
        self.backend: Any = None
        self.reset()
        if self.backend.metadata.postprocess_in_graph:
            raise ConfigError(f"{printable(path)}: post-processing is built into this graph; the benchmark times "
                              "a raw-layout export (post-processing outside the graph)")

    @classmethod
    def from_file(cls, path: str | Path, threads: int) -> _OrtNetwork:
        """An existing file written by ``srn export onnx`` (fp32 or int8), run as it is."""
        return cls(Path(path), threads)

    @classmethod
    def from_module(cls, model: nn.Module, path: Path, sample_size: tuple[int, int], post_config: PostProcessConfig,
                    backbone: str, threads: int) -> _OrtNetwork:
        """``model`` exported to ``path`` (fp32, raw layout, traced at ``sample_size``), then opened."""
        from srn.export.onnx import export_onnx

        export_onnx(model, path, sample_size=sample_size, postprocess_config=post_config, backbone=backbone)
        return cls(path, threads)

    @property
    def quantization(self) -> str | None:
        """The file's ``quantization`` metadata (e.g. "int8-qdq-per-channel"), None for an fp32 file."""
        from srn.export.quantize import QUANTIZATION_KEY

        return self.backend.session.get_modelmeta().custom_metadata_map.get(QUANTIZATION_KEY) or None

    def reset(self) -> None:
        """Open a fresh session: a session's memory arena only grows, so a block that reused the
        previous block's session would not see its own peak memory."""
        import onnxruntime

        from srn.inference.backends import OnnxBackend

        self.backend = None  # free the old session's arena before the new session is built
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.backend = OnnxBackend(self.path, torch.device("cpu"), providers=["CPUExecutionProvider"], session_options=options)

    def inputs(self, images: Tensor) -> Any:
        """The graph's input: float32 [0, 1] RGB as a numpy array (normalised inside the graph)."""
        return images.float().contiguous().numpy()

    def __call__(self, images: Any) -> list[Any]:
        return self.backend.session.run(None, {self.backend.metadata.input_name: images})

    def to_torch(self, arrays: list[Any]) -> SRNOutputs:
        from srn.inference.onnx_format import onnx_outputs_to_torch

        metadata = self.backend.metadata
        return onnx_outputs_to_torch(dict(zip(metadata.output_names, arrays)), metadata)

    def phases(self, images: Tensor, dense: bool = False) -> Callable[[Callable[[], Any]], None]:
        inputs = self.inputs(images)

        def run(mark: Callable[[], Any]) -> None:
            mark()
            raw = self(inputs)
            mark()
            outputs = self.to_torch(raw)
            if dense:
                outputs = _dense_logits(outputs)
            self.backend.postprocessor(outputs, min_score=0.0)  # OnnxBackend's, from the file's metadata
            mark()

        return run


def _is_onnx(weights: str | None) -> bool:
    return weights is not None and Path(weights).suffix.lower() == ".onnx"


def _resolve_backend(config: BenchConfig, device: torch.device, log: Callable[[str], None]) -> tuple[str, Path | None]:
    """The backend that runs SRN's network, and the existing ONNX file that it runs as it is (None:
    a PyTorch network, run as it is or exported). ``config.backend=None`` is what
    :class:`srn.inference.Detector` runs on ``device`` (see the module doc)."""
    from srn.inference.detector import runs_shipped_int8, shipped_int8

    if config.backend is not None and config.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {config.backend!r}")
    if _is_onnx(config.weights):
        if config.backend == "torch":
            raise ConfigError(f"{printable(config.weights)}: an ONNX file needs the onnxruntime backend, not torch")
        return "onnxruntime", Path(config.weights)
    if config.backend is not None:
        return config.backend, None
    # The Detector's own rule; torch.compile and channels_last exist only in PyTorch.
    shipped = config.model == "shipped" and not (config.compile or config.channels_last)
    if not (shipped and runs_shipped_int8(config.weights or None, device.type, config.dtype, config.cuda_graphs)):
        return "torch", None
    path, why = shipped_int8()
    if path is None:
        log(f"{why}; timing the shipped model in PyTorch, as srn detect then runs it")
        return "torch", None
    return "onnxruntime", path


def _check_backend(config: BenchConfig, backend: str, onnx_file: Path | None, device: torch.device) -> None:
    """The settings that the chosen backend cannot honour, as one-line errors."""
    if config.cuda_graphs and device.type != "cuda":
        raise ConfigError("CUDA graphs need a CUDA device")
    if backend != "onnxruntime":
        return
    if config.cuda_graphs:
        raise ConfigError("CUDA graphs need the torch backend")
    if device.type != "cpu":
        raise ConfigError("the onnxruntime backend runs on the CPU only")
    if config.compile:
        raise ConfigError("torch.compile needs the torch backend; onnxruntime optimises the exported graph itself")
    if config.dtype != "fp32":
        raise ConfigError(f"{config.dtype} needs the torch backend; an ONNX graph takes float32 images and runs as exported")
    if config.channels_last:
        raise ConfigError("channels_last needs the torch backend; onnxruntime chooses its own layouts")
    if onnx_file is not None:  # run as it is: no export, so onnxruntime alone
        if importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError(f"{printable(onnx_file)}: running an ONNX file needs onnxruntime: install the 'export' extra")
    elif importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("the onnxruntime backend needs onnx and onnxruntime: install the 'export' extra")


def _described_network(onnx_file: Path) -> ModelConfig | None:
    """The PyTorch network that an ONNX file is known to run, for FLOPs and parameters: the shipped
    checkpoint's for the shipped int8 file, None for any other file (its metadata does not describe
    the whole network; see the module doc)."""
    from srn.inference.detector import DEFAULT_CPU_WEIGHTS, DEFAULT_WEIGHTS
    from srn.weights import read_weights

    if onnx_file.resolve() != DEFAULT_CPU_WEIGHTS.resolve() or not DEFAULT_WEIGHTS.is_file():
        return None
    return read_weights(DEFAULT_WEIGHTS)[0].model


def _images(batch: int, size: tuple[int, int], device: torch.device, channels_last: bool, photo: Tensor | None) -> Tensor:
    """A batch of float [0, 1] images: ``photo`` (uint8 Tensor[3, H, W]) resized, or noise."""
    if photo is None:
        images = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    else:
        from torchvision.transforms.v2.functional import resize

        images = resize(photo, list(size), antialias=True).float().div(255).expand(batch, -1, -1, -1).contiguous()
    images = images.to(device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def run_benchmark(config: BenchConfig = BenchConfig(), log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure SRN (and the peer) as :class:`BenchConfig` says; returns the JSON-ready results."""
    log = log or (lambda message: None)
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    if config.iters < 1 or config.warmup < 0:
        raise ConfigError("iters must be at least 1 and warmup at least 0")
    if config.model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {config.model!r}")
    for size in (*config.sizes, *([config.throughput_size] if config.throughput_size else [])):
        check_image_size("sizes", *size)  # (H, W); a 100000x100000 input would ask for 120 GB
    device = resolve_device(config.device)
    backend, onnx_file = _resolve_backend(config, device, log)
    _check_backend(config, backend, onnx_file, device)
    batch = config.batch if config.batch is not None else (16 if device.type == "cuda" else 2)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.dtype == "bf16" else contextlib.nullcontext()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    resources = contextlib.ExitStack()

    try:
        results: dict[str, Any] = {
            "settings": {**asdict(replace(config, sizes=[size_name(s) for s in config.sizes],
                                             throughput_size=size_name(config.throughput_size) if config.throughput_size else None)),
                         "batch": batch, "device": str(device)},
            "device": _describe(device),
        }
        if backend == "onnxruntime":
            import onnxruntime

            results["device"]["onnxruntime"] = onnxruntime.__version__
        ort_threads = config.threads or torch.get_num_threads()
        # Read the user's files first, so that a bad one fails before anything is measured.
        srn_model: nn.Module | None = None
        network: _TorchSRN | _OrtNetwork | None = None
        model_config: ModelConfig | None
        if onnx_file is not None:
            network = _OrtNetwork.from_file(onnx_file, ort_threads)
            model_config = _described_network(onnx_file)
            metadata = network.backend.metadata
            if model_config is not None and (model_config.backbone, model_config.width) != (metadata.backbone, metadata.width):
                model_config = None  # the checkpoint beside it is not the network this file was made from
            srn_weights: str | None = str(onnx_file)
        else:
            srn_model, post_config, model_config = _build_srn(config, device)
            srn_weights = _srn_weights(config)
        photo = None
        if config.image:
            from srn.data.image_io import read_image

            photo = read_image(config.image)
        # The yardstick of the GPU's FLOP rate; none on the CPU (see the module doc).
        rate = None
        if device.type == "cuda":
            log(f"matmul rate on {results['device']['name']} ...")
            results["matmul"] = matmul_tflops(device, config.matmul_size)
            rate = results["matmul"]["tflops"] * 1e12

        if srn_model is not None:
            srn_model = srn_model.to(memory_format=memory_format)
            if backend == "onnxruntime":
                log("exporting SRN to ONNX ...")
                folder = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="srn-bench-")))
                network = _OrtNetwork.from_module(srn_model, folder / "srn.onnx", config.sizes[0], post_config,
                                                  model_config.backbone, ort_threads)
            else:
                network = _TorchSRN(srn_model, post_config, config)
            params_m: float | None = sum(p.numel() for p in srn_model.parameters()) / 1e6
        else:
            params_m = None if model_config is None else sum(p.numel() for p in _meta_srn(model_config).parameters()) / 1e6
        assert network is not None
        results["srn_weights"] = srn_weights
        results["srn_backend"] = backend
        results["srn_exported"] = backend == "onnxruntime" and onnx_file is None
        results["quantization"] = network.quantization if isinstance(network, _OrtNetwork) else None
        # Weight tensors re-encoded for exact int8 sums, where this CPU's int8 kernel clips (srn.inference.int8_kernels).
        results["exact_int8_weights"] = network.backend.exact_int8_weights if isinstance(network, _OrtNetwork) else 0

        def srn_gflops(size: tuple[int, int]) -> float | None:
            """None where the network is not known (an ONNX file; see the module doc)."""
            if model_config is None:
                return None
            return count_gflops(lambda: _meta_srn(model_config), lambda m, x: m(x), size)

        srn: dict[str, Any] = {"model": _model_name(config), "params_m": params_m,
                               "gflops": {}, "latency_ms": {}, "peak_memory_mb": {}, "tflops": {}}
        peer: dict[str, Any] = {"params_m": None, "gflops": {}, "latency_ms": {}, "peak_memory_mb": {}, "tflops": {}}
        if rate is not None:
            srn["matmul_share"], peer["matmul_share"] = {}, {}
        peer_model = _build_peer(config, config.sizes[0]).to(device).to(memory_format=memory_format) if config.peer else None
        if peer_model is not None:
            peer["params_m"] = sum(p.numel() for p in peer_model.parameters()) / 1e6

        def peer_phases(images: Tensor) -> Callable[[Callable[[], Any]], None]:
            items = list(images)

            def run(mark: Callable[[], Any]) -> None:
                mark()
                with autocast:
                    peer_model(items)
                mark()

            return run

        clock = _Clock(device)
        with torch.inference_mode():
            for size in config.sizes:
                name = size_name(size)
                images = _images(1, size, device, config.channels_last, photo)
                srn["gflops"][name] = srn_gflops(size)
                log(f"SRN {name} ...")
                network.reset()
                with peak_memory_mb(device) as memory:
                    forward_ms, post_ms = _median_ms(clock, network.phases(images), config.warmup, config.iters, 2)
                _, dense_ms = _median_ms(clock, network.phases(images, dense=True), min(config.warmup, 1), config.iters, 2)
                end_to_end = forward_ms + post_ms
                srn["latency_ms"][name] = {
                    "end_to_end": end_to_end, "forward": forward_ms, "postprocess": post_ms,
                    "postprocess_share": post_ms / end_to_end,
                    "postprocess_dense": dense_ms, "postprocess_dense_share": dense_ms / (forward_ms + dense_ms),
                }
                srn["peak_memory_mb"][name] = memory["mb"]
                _rate(srn, name, srn["gflops"][name], end_to_end, rate)
                if peer_model is None:
                    continue
                peer["gflops"][name] = count_gflops(lambda: _build_peer(config, size), _peer_network, size)
                log(f"peer {name} ...")
                _set_peer_size(peer_model, size)
                with peak_memory_mb(device) as memory:
                    (peer_ms,) = _median_ms(clock, peer_phases(images), config.warmup, config.iters, 1)
                peer["latency_ms"][name] = {"end_to_end": peer_ms}
                peer["peak_memory_mb"][name] = memory["mb"]
                _rate(peer, name, peer["gflops"][name], peer_ms, rate)

            if batch > 0:
                size = config.throughput_size or config.sizes[0]
                name = size_name(size)
                images = _images(batch, size, device, config.channels_last, photo)
                if name not in srn["gflops"]:
                    srn["gflops"][name] = srn_gflops(size)
                    if peer_model is not None:
                        peer["gflops"][name] = count_gflops(lambda: _build_peer(config, size), _peer_network, size)
                log(f"SRN throughput, batch {batch} at {name} ...")
                network.reset()
                with peak_memory_mb(device) as memory:
                    forward_ms, post_ms = _median_ms(clock, network.phases(images), config.warmup, config.iters, 2)
                srn["throughput"] = _throughput(batch, name, forward_ms + post_ms, srn["gflops"][name], rate, memory["mb"])
                srn["throughput"]["postprocess_share"] = post_ms / (forward_ms + post_ms)
                if peer_model is not None:
                    log(f"peer throughput, batch {batch} at {name} ...")
                    _set_peer_size(peer_model, size)
                    with peak_memory_mb(device) as memory:
                        (peer_ms,) = _median_ms(clock, peer_phases(images), config.warmup, config.iters, 1)
                    peer["throughput"] = _throughput(batch, name, peer_ms, peer["gflops"][name], rate, memory["mb"])

        results["srn"] = srn
        if peer_model is not None:
            results["peer"] = peer
            results["ratios"] = _ratios(srn, peer)
        return results
    finally:
        resources.close()
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)


def _meta_srn(model_config: ModelConfig) -> nn.Module:
    from srn.model import build_model

    return build_model(replace(model_config, pretrained=None))


def _peer_network(model: nn.Module, images: Tensor) -> None:
    # The peer's own post-processing is data-dependent (nonzero) and cannot run on meta tensors; it
    # has no multiply-adds worth counting anyway.
    features = model.backbone(images)
    model.head(list(features.values()))


def _srn_weights(config: BenchConfig) -> str | None:
    """The weights file of the PyTorch network that :func:`_build_srn` builds (None: random weights)."""
    from srn.inference.detector import DEFAULT_WEIGHTS

    if config.weights:
        return str(config.weights)
    return str(DEFAULT_WEIGHTS) if config.model == "shipped" else None


def _model_name(config: BenchConfig) -> str:
    """What was measured, in words: the weights file, "shipped", "srn_r50", or the random network's shape."""
    if config.weights:
        return str(config.weights)
    if config.model == "srn_r50" and (config.backbone, config.width) != ("resnet50", 256):
        return f"random {config.backbone}, width {config.width}"
    return config.model


def _rate(entry: dict[str, Any], name: str, gflops: float | None, ms: float, rate: float | None) -> None:
    """Record the FLOP rate reached at size ``name`` (``gflops`` in ``ms``), and its share of the
    matmul yardstick where there is one; None where the FLOPs are not known."""
    flops_per_s = None if gflops is None else gflops * 1e9 / (ms / 1e3)
    entry["tflops"][name] = None if flops_per_s is None else flops_per_s / 1e12
    if rate is not None:
        entry["matmul_share"][name] = None if flops_per_s is None else flops_per_s / rate


def _throughput(batch: int, name: str, ms: float, gflops: float | None, rate: float | None, memory_mb: float) -> dict[str, Any]:
    images_per_s = batch / (ms / 1e3)
    flops_per_s = None if gflops is None else gflops * 1e9 * images_per_s
    result = {"batch": batch, "size": name, "ms_per_batch": ms, "images_per_s": images_per_s,
              "peak_memory_mb": memory_mb, "tflops": None if flops_per_s is None else flops_per_s / 1e12}
    if rate is not None:
        result["matmul_share"] = None if flops_per_s is None else flops_per_s / rate
    return result


def _ratios(srn: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """SRN / peer for every matching number (latency > 1: SRN is slower; throughput > 1: faster);
    None where SRN's number is not known."""
    ratios = {}
    for name, latency in srn["latency_ms"].items():
        ratios[f"latency_{name}"] = latency["end_to_end"] / peer["latency_ms"][name]["end_to_end"]
        ratios[f"gflops_{name}"] = None if srn["gflops"][name] is None else srn["gflops"][name] / peer["gflops"][name]
        ratios[f"peak_memory_{name}"] = srn["peak_memory_mb"][name] / peer["peak_memory_mb"][name] if peer["peak_memory_mb"][name] else math.nan
    if "throughput" in srn and "throughput" in peer:
        ratios["throughput"] = srn["throughput"]["images_per_s"] / peer["throughput"]["images_per_s"]
    return ratios


def _describe(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "cpu")
    return {"type": device.type, "name": name, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# Report and command line
# ---------------------------------------------------------------------------------------------


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of the results: SRN, the peer and their ratio."""
    srn, peer = results["srn"], results.get("peer")
    rows = [("metric", "SRN", "RetinaNet-R50" if peer else "", "ratio" if peer else "")]

    # SRN's None: not known (the FLOPs of an ONNX file); the peer's None: no peer.
    def add(label: str, ours: float | None, theirs: float | None, fmt: str = "{:.1f}") -> None:
        ratio = f"{ours / theirs:.2f}x" if ours is not None and theirs else ""
        rows.append((label, fmt.format(ours) if ours is not None else "n/a", fmt.format(theirs) if theirs is not None else "", ratio))

    def add_share(label: str, ours: float | None, theirs: float | None) -> None:
        # A share of a yardstick above 1 measures the yardstick, not the model: not printed as a share.
        def cell(value: float | None) -> str:
            return "" if value is None else (f"{value:.1%}" if value <= 1 else "above it")

        rows.append((label, cell(ours) if ours is not None else "n/a", cell(theirs), ""))

    for name, latency in srn["latency_ms"].items():
        their = peer["latency_ms"][name]["end_to_end"] if peer else None
        add(f"latency {name} (ms)", latency["end_to_end"], their)
        rows.append((f"  post-processing share {name}", f"{latency['postprocess_share']:.1%}", "", ""))
        rows.append((f"  dense post-processing share {name}", f"{latency['postprocess_dense_share']:.1%}", "", ""))
        add(f"GFLOP {name}", srn["gflops"][name], peer["gflops"][name] if peer else None, "{:.0f}")
        add(f"peak memory {name} (MB)", srn["peak_memory_mb"][name], peer["peak_memory_mb"][name] if peer else None, "{:.0f}")
        add(f"FLOP rate reached {name} (TFLOP/s)", srn["tflops"][name], peer["tflops"][name] if peer else None, "{:.3f}")
        if "matmul_share" in srn:
            add_share(f"  share of the bf16 matmul rate {name}", srn["matmul_share"][name], peer["matmul_share"][name] if peer else None)
    if "throughput" in srn:
        label = f"throughput batch {srn['throughput']['batch']} {srn['throughput']['size']} (img/s)"
        add(label, srn["throughput"]["images_per_s"], peer["throughput"]["images_per_s"] if peer else None, "{:.2f}")
        add("  FLOP rate reached (TFLOP/s)", srn["throughput"]["tflops"], peer["throughput"]["tflops"] if peer else None, "{:.3f}")
        if "matmul_share" in srn["throughput"]:
            add_share("  share of the bf16 matmul rate", srn["throughput"]["matmul_share"],
                      peer["throughput"]["matmul_share"] if peer else None)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    device = results["device"]
    backend = results.get("srn_backend") or results["settings"].get("backend") or "torch"
    if backend == "onnxruntime" and "onnxruntime" in device:
        backend += f" {device['onnxruntime']}"
    timed = [srn.get("model", "shipped")]  # what was timed: the model, its file, how it ran
    weights = results.get("srn_weights")
    if weights and weights != timed[0]:
        timed.append(Path(weights).name)
    if results.get("srn_exported"):
        timed.append("exported to fp32 ONNX")
    if results.get("quantization"):
        timed.append(results["quantization"])
    if results.get("exact_int8_weights"):
        timed.append("weights re-encoded for exact int8 sums: this CPU's int8 kernel clips")
    header = (f"{device['name']} ({device['type']}, {device['threads']} threads), {results['settings']['dtype']}, "
              f"SRN on {backend} ({', '.join(timed)})")
    if "matmul" in results:
        matmul = results["matmul"]
        header += f", {matmul['dtype']} matmul rate {matmul['tflops']:.2f} TFLOP/s ({matmul['n']}^3)"
    return "\n".join([header, *lines])
