"""Fixtures for the desktop app's tests: a small generated project and the real main window.

Everything is offscreen (QT_QPA_PLATFORM=offscreen) and tiny: 48 px images, a dozen of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gui_helpers import CLASSES, write_png

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _usable_qt(request):
    """Fail (not abort the whole run) on a PySide6 known to crash this Python."""
    from defectssft_gui.app import qt_problem

    problem = qt_problem()
    if problem and request.node.name != "test_known_bad_pyside_is_refused_with_one_line":
        pytest.fail(problem, pytrace=False)


@pytest.fixture
def image_files(tmp_path: Path):
    """make(n, start=0, folder=None) -> list of new distinct PNG files."""

    def make(n: int, start: int = 0, folder: Path | None = None) -> list[Path]:
        folder = folder or tmp_path / "files"
        return [write_png(folder / f"img_{start + i:03d}.png", seed=start + i) for i in range(n)]

    return make


@pytest.fixture
def gui_project(tmp_path: Path, image_files):
    """A project with 12 unlabeled images, classes ok/scratch/dent (ok is the OK class)."""
    from defectssft.project import Project

    project = Project.create(tmp_path / "proj", classes=CLASSES, ok_class="ok")
    for i, f in enumerate(image_files(12)):
        project.add_image(f, capture_time=f"2024-01-01T00:00:{i:02d}+00:00")
    yield project
    project.close()


@pytest.fixture
def window(qtbot, gui_project):
    """The real main window on ``gui_project``, shown offscreen, errors kept in last_error."""
    from defectssft_gui.window import MainWindow

    win = MainWindow(gui_project, quiet=True)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.current_row() is not None)
    yield win
    win.close()
