"""defectssft desktop app (PySide6): a thin layer over the defectssft core."""
