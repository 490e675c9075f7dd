"""Labeling with undo/redo for the app: ``defectssft.labeling`` (the core) does the work."""

from defectssft.labeling import LabelChange, LabelSession

__all__ = ["LabelChange", "LabelSession"]
