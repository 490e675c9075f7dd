"""The window's way in for images: open/create a project, import files or folders (pool thread)
and watch a hot folder (a thread of its own, the grid refreshed as files arrive).

``ImportController`` owns the hot-folder thread and its status-bar line; it reports through the
window's ``importDone`` signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QLabel

from defectssft.errors import DefectssftError
from defectssft_gui import project_flows
from defectssft_gui.workers import HotFolderThread, Task, start_task

if TYPE_CHECKING:
    from defectssft_gui.window import MainWindow


class ImportController(QObject):
    """Imports and the hot folder of one ``MainWindow`` (``w``)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.w = window
        self._hot_counts: dict[str, int] = {}
        self.hot: HotFolderThread | None = None
        self.hot_label = QLabel("")
        window.statusBar().addPermanentWidget(self.hot_label)

    def choose_project(self) -> None:
        project_flows.choose_project(self.w)

    def choose_import_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self.w, "Import images", "", "Images (*.jpg *.jpeg *.png *.bmp *.tif *.tiff)"
        )
        if files:
            project_flows.open_import_dialog(self.w, files)

    def choose_import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.w, "Import a folder of images")
        if folder:
            project_flows.open_import_dialog(self.w, [folder], label_from="folder")

    def import_paths(self, paths: list[str], label_from: str | None = None) -> None:
        """Import files/folders through ``defectssft.ingest.import_paths`` on a pool thread."""
        if self.w.project is None:
            return
        from defectssft.ingest import import_paths

        task = Task(
            import_paths,
            self.w.project,
            paths,
            label_from=label_from,
            source="gui",
            with_progress=True,
        )
        self.w._tasks.add(task)
        task.signals.progress.connect(
            lambda d, t: self.w.statusBar().showMessage(f"importing {d}/{t} files…")
        )

        def done(summary: Any) -> None:
            self.w._tasks.discard(task)
            self.w.statusBar().showMessage(
                f"imported {summary.added}, {summary.duplicates} duplicates, "
                f"{summary.quarantined} quarantined",
                8000,
            )
            if summary.new_classes:
                self.w.reload_classes()
            self.w.refresh()
            self.w.importDone.emit(summary)

        def failed(msg: str) -> None:
            self.w._tasks.discard(task)
            self.w.show_error(f"import: {msg}")

        start_task(self.w.pool, task, done, failed)

    def toggle_watch(self) -> None:
        if self.hot is not None:
            self.stop_watch()
            return
        folder = QFileDialog.getExistingDirectory(self.w, "Watch a hot folder")
        if folder:
            self.start_watch(folder)
        else:
            self.w.actions_by_name["watch"].setChecked(False)

    def start_watch(self, folder: str | Path) -> bool:
        if self.w.project is None:
            return False
        self.stop_watch()
        try:
            self.hot = HotFolderThread(self.w.project, folder, parent=self.w)
        except DefectssftError as e:
            self.w.actions_by_name["watch"].setChecked(False)
            self.w.show_error(str(e))
            return False
        self.hot.ingested.connect(self._hot_ingested)
        self.hot.start()
        self.w.actions_by_name["watch"].setChecked(True)
        self._hot_counts = {"added": 0, "duplicate": 0, "quarantined": 0}
        self.hot_label.setText(f"watching {folder}")
        return True

    def stop_watch(self) -> None:
        if self.hot is not None:
            self.hot.stop()
            self.hot.deleteLater()
            self.hot = None
        self.w.actions_by_name["watch"].setChecked(False)
        self.hot_label.setText("")

    def _hot_ingested(self, _path: str, status: str) -> None:
        self._hot_counts[status] = self._hot_counts.get(status, 0) + 1
        c = self._hot_counts
        folder = self.hot.folder if self.hot else ""
        self.hot_label.setText(
            f"watching {folder}: {c['added']} new, {c['duplicate']} dup, "
            f"{c['quarantined']} quarantined"
        )
        self.w._refresh_timer.start()
