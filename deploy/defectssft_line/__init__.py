"""defectssft line runtime: verdicts from an exported model.onnx with onnxruntime, OpenCV and numpy.

This package never imports torch, timm or defectssft, so a line PC installs only ``deploy/``.
"""

__version__ = "0.1.0"
