"""Grad-CAM heat maps for the app: ``defectssft.explain`` (the core) does the work."""

from defectssft.explain import CamResult, grad_cam

__all__ = ["CamResult", "grad_cam"]
