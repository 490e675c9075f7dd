"""A label given just before the app dies is in the project: the app is killed right after the
key press (os._exit, no clean shutdown), then the project is reopened."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from defectssft.project import Project

SCRIPT = textwrap.dedent("""
    import os, sys
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication
    from defectssft.project import Project
    from defectssft_gui.window import MainWindow

    app = QApplication([])
    win = MainWindow(Project.open(sys.argv[1]), quiet=True)
    win.show()
    QTest.qWaitForWindowExposed(win)
    while win.current_row() is None:  # the grid's rows arrive from the query thread
        QTest.qWait(10)
    first = win.current_row().image_id
    QTest.keyClick(win.grid, Qt.Key.Key_2)
    second = win.current_row().image_id
    QTest.keyClick(win.grid, Qt.Key.Key_3)
    print(first, second, flush=True)
    os._exit(1)  # a crash: no close event, no Python clean-up
""")


def test_labels_survive_a_crash(gui_project):
    root = str(gui_project.root)
    gui_project.close()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, root], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 1, out.stderr
    first, second = (int(x) for x in out.stdout.split())
    with Project.open(root) as project:
        assert project.get_image(first).label == "scratch"
        assert project.get_image(second).label == "dent"
        assert project.label_history(second)[-1].who == "operator"
