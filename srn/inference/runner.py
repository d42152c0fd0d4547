"""Running SRN for inference: the network and its post-processing, eager or as CUDA graphs.

:class:`Runner` turns a batch of float [0, 1] images on the device into detections per image.
:class:`srn.inference.Detector` and ``srn bench`` both run through it.

- ``Runner(model, ...)``: the model as it is, then :class:`srn.postprocess.PostProcessor`'s exact
  path (torchvision's ``batched_nms``). This is the reference.
- ``fold=True``: an inference copy of the network in fp32, with BatchNorm folded into the
  convolutions and channels_last activations: the same detections to float rounding (1e-3 px), and
  on the CPU 1.2x to 1.4x faster than the model as it is (one thread, ``benchmarks/bench_torch_cpu.py``),
  so :class:`srn.inference.backends.TorchBackend` runs it on the CPU.
- ``precision="bf16"``: an inference copy of the network with BatchNorm folded into the
  convolutions, bf16 weights and channels_last activations. Inputs are normalised in fp32 and the
  outputs decoded in fp32 (1000-pixel coordinates in bf16 would round boxes by several pixels).
- ``cuda_graphs=True`` (CUDA only): the same inference copy (in ``precision``), the fixed-shape
  post-processing :meth:`srn.postprocess.PostProcessor.static`, and both captured as CUDA graphs,
  once per input shape and replayed afterwards: two launches instead of the hundreds of small
  kernels that make batch-1 inference wait on the CPU, and one host synchronisation, when the
  detections are read. The detections are greedy NMS's either way: an image whose static NMS is not
  proven exact is redone by ``batched_nms`` (see :mod:`srn.postprocess`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from srn.config import PostProcessConfig
from srn.errors import ConfigError, DeviceError
from srn.model.outputs import SRNOutputs
from srn.postprocess import Detections, PostProcessor, StaticDetections

# The network's weight and activation dtypes by name; the one list of precisions, which
# srn.inference.Detector and srn bench read.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that follows a Conv2d into it, in place, for inference.

    A pair is a Conv2d registered right before a BatchNorm2d of its width in the same parent module,
    which is how torchvision's ResNet (``conv1``, ``bn1``, ...) and MobileNetV2 (``Sequential(conv,
    bn, ...)``) apply them. The BatchNorm becomes an ``nn.Identity``. Returns how many were folded.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (
                isinstance(conv, nn.Conv2d)
                and type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and bn.num_features == conv.out_channels
            ):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def inference_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of ``model`` for inference only: BatchNorm folded, weights in ``dtype``, channels_last."""
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model)
    model.requires_grad_(False)
    return model.to(dtype=dtype, memory_format=torch.channels_last)


def float_outputs(outputs: SRNOutputs) -> SRNOutputs:
    """Logits and deltas as float32 (a no-op for an fp32 network)."""
    def as_float(tensors: list) -> list:
        return [t if t is None else t.float() for t in tensors]

    return outputs._replace(step1_logits=as_float(outputs.step1_logits), step1_deltas=as_float(outputs.step1_deltas),
                            step2_logits=as_float(outputs.step2_logits), step2_deltas=as_float(outputs.step2_deltas))


def image_outputs(outputs: SRNOutputs, index: int) -> SRNOutputs:
    """Image ``index`` of a batch's outputs, as the outputs of a batch of one (anchors shared)."""
    def one(tensors: list) -> list:
        return [t if t is None else t[index : index + 1] for t in tensors]

    return outputs._replace(step1_logits=one(outputs.step1_logits), step1_deltas=one(outputs.step1_deltas),
                            step2_logits=one(outputs.step2_logits), step2_deltas=one(outputs.step2_deltas))


def postprocess_each_image(postprocessor: PostProcessor, outputs: SRNOutputs, min_score: float = 0.0) -> list[Detections]:
    """``postprocessor(outputs, min_score)``, one image at a time.

    NMS over a batch (``torchvision.ops.batched_nms``) shifts each image's boxes by an offset that
    depends on the whole batch, and float rounding of the shifted coordinates can flip a decision at
    an IoU near the threshold; image by image, an image's detections are those it gets alone.
    """
    if outputs.step2_logits[0].shape[0] == 1:
        return postprocessor(outputs, min_score)
    return [postprocessor(image_outputs(outputs, i), min_score)[0] for i in range(outputs.step2_logits[0].shape[0])]


class _Graphs:
    """The network and the post-processing of one input shape, captured as two CUDA graphs."""

    def __init__(self, runner: Runner, images: Tensor) -> None:
        with torch.cuda.device(images.device):  # capture happens on the current device
            self.input = torch.empty_like(images, memory_format=torch.channels_last)
            self.input.copy_(images)
            # Warm up on a side stream (cuDNN/cuBLAS choices, the anchor cache), as capture requires.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    runner.static_postprocess(runner.network(self.input))
            torch.cuda.current_stream().wait_stream(stream)
            self.network = torch.cuda.CUDAGraph()
            # thread_local: a decoding thread of the caller (srn.media.video) may allocate meanwhile.
            with torch.cuda.graph(self.network, capture_error_mode="thread_local"):
                self.outputs = runner.network(self.input)
            # Replayed in capture order, the two graphs can share one memory pool.
            self.postprocess = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.postprocess, pool=self.network.pool(), capture_error_mode="thread_local"):
                self.static = runner.static_postprocess(self.outputs)


class Runner:
    """The network and its post-processing, for batches of float [0, 1] images on the device.

    Args:
        model: an SRN in eval mode (left untouched: ``precision``/``cuda_graphs`` work on a copy).
        config: the post-processing settings.
        min_score: detections must score at least this.
        precision: "fp32", or "bf16" for bf16 weights and activations.
        cuda_graphs: capture and replay CUDA graphs (CUDA devices only).
        max_candidates, sweeps: the static NMS's budget (see
            :func:`srn.postprocess.static_detections`); images beyond it are redone exactly.
        max_graphs: input shapes whose graphs are kept (least recently used ones are dropped).
        static_postprocess: the fixed-shape post-processing even without graphs (for testing it on
            the CPU; default: with ``cuda_graphs``).
        outputs_hook: applied to the network's outputs before post-processing, inside the graph
            (``srn bench`` uses it to time post-processing on dense logits).
        fold: run the inference copy (BatchNorm folded, channels_last) in fp32 too.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PostProcessConfig = PostProcessConfig(),
        min_score: float = 0.0,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        max_candidates: int = 1024,
        sweeps: int = 12,
        max_graphs: int = 8,
        static_postprocess: bool | None = None,
        outputs_hook: Callable[[SRNOutputs], SRNOutputs] | None = None,
        fold: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        device = next(model.parameters()).device
        if cuda_graphs and device.type != "cuda":
            raise DeviceError(f"CUDA graphs need a CUDA device, got {device}")
        self.config, self.min_score = config, min_score
        self.postprocessor = PostProcessor.from_model(model, config)
        self.optimised = precision != "fp32" or cuda_graphs or fold
        self.net = inference_copy(model, PRECISIONS[precision]) if self.optimised else model
        self.cuda_graphs = cuda_graphs
        self.static = cuda_graphs if static_postprocess is None else static_postprocess
        self.max_candidates, self.sweeps, self.max_graphs = max_candidates, sweeps, max_graphs
        self.outputs_hook = outputs_hook
        self._graphs: OrderedDict[tuple, _Graphs] = OrderedDict()

    # -- the two stages ------------------------------------------------------------------------
    def network(self, images: Tensor) -> SRNOutputs:
        """Raw outputs (float32 logits and deltas) of the network on float [0, 1] images."""
        if self.optimised:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs = self.net(images)
        if self.optimised:
            outputs = float_outputs(outputs)
        return self.outputs_hook(outputs) if self.outputs_hook else outputs

    def static_postprocess(self, outputs: SRNOutputs) -> StaticDetections:
        """The fixed-shape post-processing of raw outputs (no host sync), with this runner's budget."""
        return self.postprocessor.static(outputs, self.min_score, self.max_candidates, self.sweeps)

    # -- running -------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, images: Tensor, mark: Callable[[], Any] | None = None) -> list[Detections]:
        """:class:`Detections` of each image of ``images`` (Tensor[N, 3, H, W], float [0, 1]).
        ``mark()``, when given, is called between the network and the post-processing (``srn bench``
        times the two stages with it)."""
        mark = mark or (lambda: None)
        if self.cuda_graphs:
            graphs = self._graphs_for(images)
            with torch.cuda.device(images.device):
                graphs.input.copy_(images)
                graphs.network.replay()
                mark()
                graphs.postprocess.replay()
            static = graphs.static
        else:
            outputs = self.network(images)
            mark()
            if not self.static:
                return postprocess_each_image(self.postprocessor, outputs, self.min_score)
            static = self.static_postprocess(outputs)
        detections = self.postprocessor.unpack(static, self.min_score)
        if self.cuda_graphs:  # the graph's buffers are overwritten by the next replay
            return [Detections(d.boxes.clone(), d.scores.clone()) for d in detections]
        return detections

    def _graphs_for(self, images: Tensor) -> _Graphs:
        key = (tuple(images.shape), images.dtype, images.device)
        graphs = self._graphs.get(key)
        if graphs is None:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            graphs = self._graphs[key] = _Graphs(self, images)
        self._graphs.move_to_end(key)
        return graphs
