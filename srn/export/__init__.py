"""Export of a trained model: ONNX (:mod:`~srn.export.onnx`).
"""
