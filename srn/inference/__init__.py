"""Inference: one :class:`Detector`, two backends (PyTorch's runner, onnxruntime)."""

from srn.inference.detector import DEFAULT_WEIGHTS, Detector, Faces, ImageInput, resolve_device

__all__ = ["DEFAULT_WEIGHTS", "Detector", "Faces", "ImageInput", "resolve_device"]
