"""Inference: one :class:`Detector`, two backends (PyTorch's runner, onnxruntime), and its results."""

from srn.inference.detector import DEFAULT_WEIGHTS, Detector, ImageInput, ZoomPass, resolve_device
from srn.inference.draw import draw_faces
from srn.inference.results import Face, Faces, write_image

__all__ = ["DEFAULT_WEIGHTS", "Detector", "Face", "Faces", "ImageInput", "ZoomPass", "draw_faces", "resolve_device", "write_image"]
