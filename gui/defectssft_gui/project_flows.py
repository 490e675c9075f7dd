"""The window's ways into a project and its images: New project (wizard), Open or create, Import
(with preview), Import history (undo). ``MainWindow`` calls these with itself; each one is short
and hands the real work to the core on a pool thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import QFileDialog, QMessageBox

from defectssft.new_project import check_project_folder
from defectssft_gui.workers import Task, start_task

if TYPE_CHECKING:
    from defectssft.import_plan import ImportPlan
    from defectssft_gui.window import MainWindow


def new_project(
    window: MainWindow, folder: str | Path | None = None, images: str | None = None
) -> Any:
    """Show the wizard (non-modal); on Finish open the project and run its import."""
    from defectssft_gui.wizard import NewProjectWizard

    wizard = NewProjectWizard(folder, window)
    if images:
        wizard.images_page.paths.setText(images)

    def finished(result: int) -> None:
        if result and wizard.project is not None:
            window.open_project(wizard.project)
            if wizard.plan is not None:
                run_import_plan(window, wizard.plan)

    wizard.finished.connect(finished)
    window.wizard = wizard
    wizard.show()
    return wizard


def choose_project(window: MainWindow, folder: str | None = None) -> None:
    """Open a project folder; an empty or new one starts the wizard there. A folder of images
    offers a project beside it that imports them; any other non-empty folder is refused."""
    if folder is None:
        folder = QFileDialog.getExistingDirectory(window, "Open or create a project folder")
        if not folder:
            return
    check = check_project_folder(folder)
    if check.kind == "project":
        window.open_project(folder)
    elif check.kind == "new":
        new_project(window, folder)
    elif check.kind == "images" and _ask(
        window,
        "Not a project",
        f"{folder} holds {check.images} images but is not a project. Create a new project "
        f"in {check.beside} and import them?",
    ):
        new_project(window, check.beside, images=str(check.path))
    elif check.kind != "images":
        window.show_error(check.message())


def _ask(window: MainWindow, title: str, text: str) -> bool:
    if window.quiet:  # tests and scripts: the answer is yes, and it is logged
        window.statusBar().showMessage(text, 5000)
        return True
    answer = QMessageBox.question(window, title, text)
    return answer == QMessageBox.StandardButton.Yes


def open_import_dialog(
    window: MainWindow, paths: list[str] | None = None, label_from: str | None = None
) -> Any:
    """The import dialog with its preview; Import runs the plan on a pool thread."""
    from defectssft_gui.import_dialog import ImportDialog

    if window.project is None:
        return None
    dialog = ImportDialog(window.project, paths, label_from, window)

    def finished(result: int) -> None:
        if result and dialog.plan is not None:
            run_import_plan(window, dialog.plan)

    dialog.finished.connect(finished)
    window.import_dialog = dialog
    dialog.show()
    if paths:
        dialog.start_scan()
    return dialog


def run_import_plan(window: MainWindow, plan: ImportPlan) -> None:
    """Apply ``plan`` (``defectssft.import_plan.apply_plan``) off the GUI thread, recorded."""
    from defectssft.import_plan import apply_plan

    project = window.project
    if project is None:
        return
    who = str(project.get_setting("gui.who", "operator"))
    task = Task(apply_plan, project, plan, source="gui", who=who, with_progress=True)
    window._tasks.add(task)  # noqa: SLF001 - the window keeps running tasks alive
    task.signals.progress.connect(
        lambda d, t: window.statusBar().showMessage(f"importing {d}/{t} files…")
    )

    def done(summary: Any) -> None:
        window._tasks.discard(task)  # noqa: SLF001
        extra = f", {summary.relabeled} relabeled" if summary.relabeled else ""
        note = f" — {summary.notes[0]}" if summary.notes else ""
        window.statusBar().showMessage(
            f"import {summary.import_id}: {summary.added} added, {summary.duplicates} "
            f"duplicates, {summary.quarantined} quarantined{extra}{note}",
            10000,
        )
        window.reload_classes()
        window.refresh()
        window.importDone.emit(summary)

    def failed(msg: str) -> None:
        window._tasks.discard(task)  # noqa: SLF001
        window.show_error(f"import: {msg}")

    start_task(window.pool, task, done, failed)


def open_imports(window: MainWindow) -> Any:
    """Import history with undo; the grid and classes follow an undo."""
    from defectssft_gui.import_dialog import ImportsDialog

    if window.project is None:
        return None
    dialog = ImportsDialog(window.project, window)

    def changed() -> None:
        window.reload_classes()
        window.refresh()

    dialog.changed.connect(changed)
    window.imports_dialog = dialog
    dialog.show()
    return dialog
