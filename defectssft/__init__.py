"""defectssft: industrial defect inspection from a few labels and the unlabeled production stream."""

__version__ = "0.1.0"
