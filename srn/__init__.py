"""SRN, the Selective Refinement Network for face detection, on PyTorch."""

from __future__ import annotations

from typing import Any

from srn.version import __version__

_EXPORTS = {
    "Detector": "srn.inference",
    "Face": "srn.inference",
    "Faces": "srn.inference",
    "ZoomPass": "srn.inference",
    "draw_faces": "srn.inference",
    "anonymize": "srn.media.anonymize",
    "SRN": "srn.model",
    "build_model": "srn.model",
    "DetectorConfig": "srn.config",
    "ModelConfig": "srn.config",
    "PostProcessConfig": "srn.config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so that `srn --help` and config parsing do not pay for importing torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'srn' has no attribute {name!r}")
