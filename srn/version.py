"""The package's version, in a module of its own so that the command line and the ONNX metadata read
it without importing the package's lazy re-exports."""

__version__ = "0.1.0"
