"""The anomaly map as a heat-map choice beside Grad-CAM, and the "novel" filter's entry.

View → Anomaly map draws the version's anomaly map (``defectssft.anomaly.anomaly_view``, on a pool
thread) over the current image, only where it is high (``defectssft_line.novelty.heat_weights``),
and says the score against the threshold. It and the Grad-CAM heat map exclude each other. The
core work is in ``defectssft``; this module only wires it into the window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from defectssft_gui.actions import new_action
from defectssft_gui.workers import Task, start_task

if TYPE_CHECKING:
    from defectssft_gui.window import MainWindow

NOVEL_FILTER = ("novel (unlabeled, by anomaly score)", "novel")


class AnomalyMapController(QObject):
    """The checkable "Anomaly map" action of one window (``w``)."""

    ready = Signal(str)  # image path whose anomaly map is shown (tests wait on it)

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.w = window
        self.action = new_action(
            window,
            "Anomaly map",
            self.toggle,
            tip="Show where the part differs from good parts (the model's anomaly head)",
            checkable=True,
        )
        window.actions_by_name["heatmap"].toggled.connect(self._gradcam_toggled)
        for menu_action in window.menuBar().actions():
            menu = menu_action.menu()
            if menu is not None and window.actions_by_name["heatmap"] in menu.actions():
                menu.insertAction(self._after_heatmap(menu), self.action)

    def _after_heatmap(self, menu: Any) -> Any:
        actions = menu.actions()
        i = actions.index(self.w.actions_by_name["heatmap"])
        return actions[i + 1] if i + 1 < len(actions) else None

    def _gradcam_toggled(self, on: bool) -> None:
        if on and self.action.isChecked():
            self.action.setChecked(False)

    def toggle(self) -> None:
        if self.action.isChecked():
            gradcam = self.w.actions_by_name["heatmap"]
            if gradcam.isChecked():
                gradcam.setChecked(False)
            self.compute()
        else:
            self.w.viewer.clear_heatmap()

    def on_image_shown(self) -> None:
        if self.action.isChecked():
            self.compute()

    def compute(self) -> None:
        cur = self.w.current_row()
        if self.w.project is None or cur is None or cur.image_id is None:
            return
        if self.w.model_version is None:
            self.w.show_error("no trained model yet: train one to see the anomaly map")
            self.action.setChecked(False)
            return
        from defectssft.verdicts import shown_anomaly

        path = cur.path
        task = Task(
            shown_anomaly,
            self.w.project,
            self.w.model_version,
            path,
            bit_depth=int(self.w.project.get_setting("input.bit_depth", 16) or 16),
        )
        self.w._tasks.add(task)
        self.w.statusBar().showMessage("computing the anomaly map…")

        def done(result: Any) -> None:
            view, text = result
            self.w._tasks.discard(task)
            self.w.statusBar().clearMessage()
            if self.w.viewer.path == path and self.action.isChecked():
                self.w.viewer.set_heatmap(view.heat)
                self.w.pred_label.setText(text)
                self.ready.emit(path)

        def failed(msg: str) -> None:
            self.w._tasks.discard(task)
            self.w.statusBar().clearMessage()
            self.action.setChecked(False)
            self.w.show_error(f"anomaly map: {msg}")

        start_task(self.w.pool, task, done, failed)
