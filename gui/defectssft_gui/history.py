"""The label history of one image (who, when, from what to what, how): the project's append-only
label events (``Project.label_history``), newest first, in a small non-modal dialog."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from defectssft.project import Project

COLUMNS = ("when (UTC)", "who", "label", "before", "how")


class LabelHistoryDialog(QDialog):
    """Shows ``project.label_history(image_id)``; ``show_image`` switches to another image."""

    def __init__(self, project: Project, image_id: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.title = QLabel("")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.table, 1)
        self.resize(620, 320)
        self.show_image(image_id)

    def show_image(self, image_id: int) -> None:
        rec = self.project.get_image(image_id)
        events = list(reversed(self.project.label_history(image_id)))
        self.setWindowTitle(f"Label history of #{image_id}")
        self.title.setText(
            f"#{image_id} {rec.original_name or ''}: {len(events)} change(s); "
            f"label now {rec.label or '(none)'}"
        )
        self.table.setRowCount(len(events))
        for r, e in enumerate(events):
            values = (e.time, e.who, e.label or "(cleared)", e.previous or "(none)", e.source)
            for c, v in enumerate(values):
                self.table.setItem(r, c, QTableWidgetItem(str(v)))
        self.table.resizeColumnsToContents()
