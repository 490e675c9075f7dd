"""The window's model work: predict unlabeled (child process), predict all (pool thread, saved
batch by batch, cancellable) and the Grad-CAM heat map of the current image.

``PredictController`` owns the prediction process, the running predict-all and their progress bar
and Cancel button in the status bar; it reports through the window's signals
(``predictionsDone``, ``predictAllDone``, ``camReady``) so tests and the benchmark wait on them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QProgressBar, QPushButton

from defectssft import queries
from defectssft.project import Project
from defectssft_gui.workers import JsonProcess, Task, start_task

if TYPE_CHECKING:
    from defectssft_gui.window import MainWindow

PREDICT_BATCH_SETTING = "gui.predict_batch"  # images per batch (and per saved transaction)


class PredictController(QObject):
    """Prediction and heat maps for one ``MainWindow`` (``w``)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.w = window
        self.predict_proc = JsonProcess(self)
        self.predict_proc.finished.connect(self._predict_finished)
        self.predict_proc.event.connect(self._predict_event)
        self._predict_all: tuple[Task, threading.Event] | None = None  # running predict-all
        self.predict_bar = QProgressBar()
        self.predict_bar.setMaximumWidth(220)
        self.predict_bar.setFormat("predicting %v/%m")
        self.predict_bar.setVisible(False)
        self.predict_cancel_button = QPushButton("Cancel")
        self.predict_cancel_button.setToolTip("Stop the prediction after its current batch")
        self.predict_cancel_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.predict_cancel_button.clicked.connect(self.cancel_predict)
        self.predict_cancel_button.setVisible(False)
        window.statusBar().addPermanentWidget(self.predict_bar)
        window.statusBar().addPermanentWidget(self.predict_cancel_button)

    def stop(self) -> None:
        """The window closes or changes project: the predict-all thread stops after its batch."""
        if self._predict_all is not None:  # its result is then ignored
            self._predict_all[1].set()

    def compute_heatmap(self) -> None:
        """Grad-CAM of the current image with the current model, on a pool thread."""
        cur = self.w.current_row()
        if self.w.project is None or cur is None or cur.image_id is None:
            return
        if self.w.model_version is None:
            self.w.show_error("no trained model yet: train one to see heat maps")
            self.w.actions_by_name["heatmap"].setChecked(False)
            return
        from defectssft.explain import grad_cam

        model_file = self.w.project.models_dir / self.w.model_version / "model.pt"
        path = cur.path
        task = Task(
            grad_cam,
            model_file,
            path,
            bit_depth=int(self.w.project.get_setting("input.bit_depth", 16) or 16),
        )
        self.w._tasks.add(task)
        self._cam_busy(True)

        def done(result: Any) -> None:
            self.w._tasks.discard(task)
            self._cam_busy(False)
            if self.w.viewer.path == path and self.w.actions_by_name["heatmap"].isChecked():
                if self.w.project is not None:  # a class renamed since training: today's name
                    result.classes = self.w.project.current_class_names(result.classes)
                self.w.viewer.set_heatmap(result.heat)
                self.w.pred_label.setText(
                    f"model {self.w.model_version}: {result.predicted} ({result.confidence:.1%}); "
                    f"heat map of {result.classes[result.class_index]}"
                )
                self.w.camReady.emit(path)

        def failed(msg: str) -> None:
            self.w._tasks.discard(task)
            self._cam_busy(False)
            self.w.actions_by_name["heatmap"].setChecked(False)
            self.w.show_error(f"heat map: {msg}")

        start_task(self.w.pool, task, done, failed)

    def _cam_busy(self, start: bool) -> None:
        """Heat maps take seconds on a CPU: say so while one is computed."""
        self._cams = getattr(self, "_cams", 0) + (1 if start else -1)
        if self._cams > 0:
            self.w.statusBar().showMessage("computing the heat map (Grad-CAM)…")
            self.w.pred_label.setText("computing the heat map…")
        else:
            self.w.statusBar().clearMessage()

    def prediction_running(self) -> bool:
        """True while Predict unlabeled (child process) or Predict all (pool thread) runs."""
        return self._predict_all is not None or self.predict_proc.running()

    def run_predict(self) -> None:
        """Predict unlabeled images with the current model in a child process."""
        if self.w.project is None:
            return
        if self.prediction_running():
            self.w.statusBar().showMessage("prediction already running", 3000)
            return
        if queries.current_model(self.w.project) is None:
            self.w.show_error("no trained model yet: Model → Train first")
            return
        self.w.statusBar().showMessage("predicting…")
        self.predict_proc.start("defectssft_gui.predict", [str(self.w.project.root)])
        self._sync_predict_ui()

    def _predict_event(self, ev: dict) -> None:
        if ev.get("event") == "progress":
            self._predict_progress(int(ev.get("done", 0)), int(ev.get("total", 0)))

    def _predict_finished(self, code: int, error: str) -> None:
        self._sync_predict_ui()
        if code != 0:
            self.w.show_error(f"predict: {error or f'failed (exit code {code})'}")
        else:
            self.w.statusBar().showMessage("predictions saved", 8000)  # not the last progress
            self.w.refresh()
        self.w.predictionsDone.emit(code)

    def predict_all(self) -> None:
        """Score every image with the current model on a pool thread (never the GUI thread).

        Predictions are saved batch by batch (``gui.predict_batch`` images, one transaction
        each), so Cancel, a crash or closing the window loses at most the batch in flight.
        """
        if self.w.project is None:
            return
        if self.prediction_running():
            self.w.statusBar().showMessage("prediction already running", 3000)
            return
        version = queries.current_model(self.w.project)
        if version is None:
            self.w.show_error("no trained model yet: Model → Train first")
            return
        from defectssft.predict import predict_images

        try:
            batch = max(1, int(self.w.project.get_setting(PREDICT_BATCH_SETTING, 32) or 32))
        except (TypeError, ValueError):
            batch = 32
        stop = threading.Event()
        project = self.w.project
        task = Task(
            predict_images,
            project,
            version,
            only_unlabeled=False,
            batch_size=batch,
            should_stop=stop.is_set,
            with_progress=True,
        )
        self.w._tasks.add(task)
        self._predict_all = (task, stop)
        task.signals.progress.connect(self._predict_progress)
        start_task(
            self.w.pool,
            task,
            lambda summary: self._predict_all_finished(task, project, summary, ""),
            lambda msg: self._predict_all_finished(task, project, None, msg),
        )
        self._sync_predict_ui()
        self.w.statusBar().showMessage(
            f"predicting all images with {version}… ({self.w._keys('cancel_predict')} cancels)"
        )

    def _predict_progress(self, done: int, total: int) -> None:
        self.predict_bar.setRange(0, max(total, 1))
        self.predict_bar.setValue(done)
        self.w.statusBar().showMessage(
            f"predicting {done}/{total} images… ({self.w._keys('cancel_predict')} cancels)"
        )

    def _predict_all_finished(
        self, task: Task, project: Project, summary: dict[str, Any] | None, error: str
    ) -> None:
        self.w._tasks.discard(task)
        if self._predict_all is not None and self._predict_all[0] is task:
            self._predict_all = None
        self._sync_predict_ui()
        if project is not self.w.project:  # the window moved on to another project
            return
        if summary is None:
            self.w.show_error(f"predict all: {error}")
            self.w._after_rows_note = f"error: predict all: {error}"
            result: dict[str, Any] = {"error": error}
        else:
            skipped = f", {summary['skipped']} unreadable" if summary.get("skipped") else ""
            if summary.get("cancelled"):
                note = (
                    f"prediction cancelled: {summary['done']} of {summary['total']} images "
                    f"done and saved{skipped}"
                )
            else:
                note = f"predicted {summary['predicted']} images with {summary['version']}{skipped}"
            self.w.statusBar().showMessage(note, 15000)
            self.w._after_rows_note = note
            result = dict(summary)
        self.w.refresh()  # suggestions, filters and sort by score use the new predictions
        self.w.predictAllDone.emit(result)

    def cancel_predict(self) -> None:
        """Stop the running prediction after its current batch; saved batches stay."""
        if self._predict_all is not None:
            self._predict_all[1].set()
            self.w.statusBar().showMessage("cancelling after the current batch…")
        if self.predict_proc.running():
            self.predict_proc.terminate()  # the child stops after its batch too (SIGTERM)

    def _sync_predict_ui(self) -> None:
        """Progress bar, Cancel button and action enabled only while a prediction runs."""
        running = self.prediction_running()
        if running and self.predict_bar.isHidden():
            self.predict_bar.setRange(0, 0)  # busy until the first batch reports
        self.predict_bar.setVisible(running)
        self.predict_cancel_button.setVisible(running)
        self.w.actions_by_name["cancel_predict"].setEnabled(running)
