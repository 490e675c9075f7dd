"""Train and export from the app: ``defectssft train`` and ``defectssft export`` as child processes.

Training runs as ``python -m defectssft train PROJECT --preset P --json-progress --set k=v ...``
(QProcess): the window stays responsive, a crash of the trainer cannot take the labels with it,
and Cancel sends SIGTERM so the trainer saves its checkpoint and exits. The JSON-lines progress
feeds a small QPainter chart of loss and validation accuracy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from defectssft.errors import DefectssftError
from defectssft.project import Project
from defectssft_gui.workers import JsonProcess

ACCURACY_KEYS = ("accuracy", "balanced_accuracy", "acc", "val_accuracy")
DEFAULT_PRESETS = ("quick", "overnight")


def preset_names() -> list[str]:
    try:
        from defectssft.training.config import preset_names as names

        return list(names()) or list(DEFAULT_PRESETS)
    except (ImportError, DefectssftError, OSError):
        return list(DEFAULT_PRESETS)


def parse_overrides(text: str) -> list[str]:
    """``"train.steps=5 model.name=x"`` -> ["train.steps=5", "model.name=x"]; ValueError if bad."""
    items = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or "." not in key or value == "":
            raise ValueError(f"override {item!r} is not section.key=value (e.g. train.steps=100)")
    return items


class CurvesWidget(QWidget):
    """Training loss (left scale) and validation accuracy (right scale, 0-1) against step."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(180)
        self.loss: list[tuple[float, float]] = []
        self.acc: list[tuple[float, float]] = []
        self.steps = 1

    def clear(self) -> None:
        self.loss, self.acc, self.steps = [], [], 1
        self.update()

    def add_loss(self, step: float, value: float) -> None:
        if math.isfinite(value):
            self.loss.append((step, value))
            self.update()

    def add_accuracy(self, step: float, value: float) -> None:
        if math.isfinite(value):
            self.acc.append((step, value))
            self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("#1e1e1e"))
        left, right, top, bottom = 46, 46, 10, 22
        w, h = self.width() - left - right, self.height() - top - bottom
        if w <= 10 or h <= 10:
            return
        p.setPen(QPen(QColor("#555555")))
        p.drawRect(left, top, w, h)
        xmax = max([self.steps] + [s for s, _ in self.loss] + [s for s, _ in self.acc])
        lmax = max([v for _, v in self.loss], default=1.0) or 1.0

        def pt(step: float, value: float, vmax: float) -> QPointF:
            return QPointF(left + w * step / max(xmax, 1), top + h * (1 - value / vmax))

        for series, vmax, colour in ((self.loss, lmax, "#ff7f0e"), (self.acc, 1.0, "#2ca02c")):
            if not series:
                continue
            path = QPainterPath(pt(*series[0], vmax))
            for s, v in series[1:]:
                path.lineTo(pt(s, v, vmax))
            p.setPen(QPen(QColor(colour), 2))
            p.drawPath(path)
            if len(series) == 1:
                p.drawEllipse(pt(*series[0], vmax), 3, 3)
        p.setPen(QColor("#ff7f0e"))
        p.drawText(4, top + 12, f"{lmax:.2f}")
        p.drawText(4, top + h, "loss")
        p.setPen(QColor("#2ca02c"))
        p.drawText(left + w + 4, top + 12, "1.0")
        p.drawText(left + w + 4, top + h, "acc")
        p.setPen(QColor("#aaaaaa"))
        p.drawText(left, top + h + 16, f"step 0 … {int(xmax)}")
        p.end()


class TrainDialog(QDialog):
    """Presets and main settings, live progress, cancel, the evaluation report, export."""

    runFinished = Signal(str, int)  # status ("completed", "interrupted", "failed", ...), exit code
    modelTrained = Signal(str)  # new model version
    exportFinished = Signal(int, str)  # exit code, path of the ONNX file ("" on failure)
    evaluationFinished = Signal(int)  # exit code of `defectssft evaluate`

    def __init__(self, project_root: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.root = Path(project_root)
        self.setWindowTitle("Train and export")
        self.resize(720, 640)
        self.proc = JsonProcess(self)
        self.proc.event.connect(self._on_event)
        self.proc.text.connect(self._on_text)
        self.proc.finished.connect(self._on_finished)
        self.export_proc = JsonProcess(self)
        self.export_proc.text.connect(self._on_text)
        self.export_proc.finished.connect(self._on_export_finished)
        self.eval_proc = JsonProcess(self)
        self.eval_proc.text.connect(self._on_text)
        self.eval_proc.finished.connect(self._on_eval_finished)
        self.auto_evaluate = True  # evaluate on the test split after a completed run
        self.evaluation = ""
        self.status = ""
        self.version: str | None = None
        self.onnx_path = ""
        self.final: dict[str, Any] = {}
        self._versions_before: set[str] = set()
        self._cancelled = False
        self._setup()

    # ------------------------------------------------------------ widgets
    def _setup(self) -> None:
        self.preset = QComboBox()
        self.preset.addItems(preset_names())
        self.preset.setCurrentIndex(max(0, self.preset.findText("quick")))
        self.steps = QSpinBox()
        self.steps.setRange(0, 1_000_000)
        self.steps.setSpecialValueText("preset")
        self.model_name = QLineEdit()
        self.model_name.setPlaceholderText("preset (e.g. tf_efficientnet_lite0)")
        self.weights = QComboBox()
        self.weights.addItems(["preset", "imagenet", "none"])
        self.input_h, self.input_w = QSpinBox(), QSpinBox()
        for box in (self.input_h, self.input_w):
            box.setRange(0, 2048)
            box.setSingleStep(32)
            box.setSpecialValueText("preset")
        self.size_note = QLabel("")
        self.size_note.setWordWrap(True)
        self.preset.currentIndexChanged.connect(lambda _i: self.propose_size())
        size_row = QHBoxLayout()
        size_row.addWidget(self.input_h)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.input_w)
        size_row.addWidget(self.size_note, 1)
        self.method = QComboBox()
        self.method.addItems(["preset", "fixmatch", "freematch", "supervised"])
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("more overrides: train.batch_size=8 ssl.threshold=0.9")
        form = QFormLayout()
        form.addRow("Preset", self.preset)
        form.addRow("Steps", self.steps)
        form.addRow("Backbone", self.model_name)
        form.addRow("Weights", self.weights)
        form.addRow("Input height × width (px)", size_row)
        form.addRow("Semi-supervised method", self.method)
        form.addRow("Overrides", self.extra)

        self.start_button = QPushButton("Start training")
        self.cancel_button = QPushButton("Cancel")
        self.export_button = QPushButton("Export ONNX")
        self.close_button = QPushButton("Close")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self.export)
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.cancel_button, self.export_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.curves = CurvesWidget()
        self.state_label = QLabel("Choose a preset and start.")
        self.report = QLabel("")
        self.report.setWordWrap(True)
        self.report.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setMaximumHeight(130)
        self.report.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.state_label)
        lay.addWidget(self.progress)
        lay.addWidget(self.curves, 1)
        lay.addWidget(self.report)
        lay.addWidget(self.log)
        self._set_running(False)
        self.export_button.setEnabled(self._latest_version() is not None)
        self.propose_size()

    def propose_size(self) -> None:
        """Height × width from the images' median aspect ratio at about the preset's pixel
        count (``defectssft.inputsize``); left to the preset for square-ish images."""
        from defectssft.inputsize import image_sizes, propose_input_size, shrink_note

        try:
            from defectssft.training.config import load_preset

            preset = load_preset(self.preset.currentText())
            side = int((preset.get("input") or {}).get("height", 0))
            if (preset.get("tiles") or {}).get("enabled"):  # tiles: the preset's tile size
                self.input_h.setValue(0)
                self.input_w.setValue(0)
                self.size_note.setText(f"tiles of {side} × {side} at native resolution")
                return
            project = Project.open(self.root)
            try:
                sizes = image_sizes(project)
            finally:
                project.close()
        except (DefectssftError, OSError, ValueError, TypeError):
            return
        if side < 1 or not sizes:
            return
        h, w = propose_input_size(sizes, side)
        note = shrink_note(sizes, h, w)
        more = f"\n{note}" if note else ""
        if max(h, w) / min(h, w) < 1.2:
            self.input_h.setValue(0)
            self.input_w.setValue(0)
            self.size_note.setText(f"square images: the preset's {side} × {side}{more}")
            return
        self.input_h.setValue(h)
        self.input_w.setValue(w)
        self.size_note.setText(f"proposed: about {side}² pixels, shaped like the images{more}")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.export_button.setEnabled(not running and self._latest_version() is not None)
        for w in (
            self.preset,
            self.steps,
            self.model_name,
            self.weights,
            self.input_h,
            self.input_w,
            self.method,
            self.extra,
        ):
            w.setEnabled(not running)

    # ------------------------------------------------------------ training
    def overrides(self) -> list[str]:
        """The ``--set`` items from the form (ValueError for a malformed override)."""
        items = []
        if self.steps.value() > 0:
            items.append(f"train.steps={self.steps.value()}")
        if self.model_name.text().strip():
            items.append(f"model.name={self.model_name.text().strip()}")
        if self.weights.currentText() != "preset":
            items.append(f"model.weights={self.weights.currentText()}")
        if self.input_h.value() > 0:
            items.append(f"input.height={self.input_h.value()}")
        if self.input_w.value() > 0:
            items.append(f"input.width={self.input_w.value()}")
        if self.method.currentText() != "preset":
            items.append(f"ssl.method={self.method.currentText()}")
        return items + parse_overrides(self.extra.text())

    def command_args(self) -> list[str]:
        args = ["train", str(self.root), "--preset", self.preset.currentText(), "--json-progress"]
        for item in self.overrides():
            args += ["--set", item]
        return args

    def start(self) -> bool:
        if self.proc.running() or self.eval_proc.running():
            return False
        try:
            args = self.command_args()
        except ValueError as e:
            self._fail(str(e))
            return False
        self._versions_before = set(self._versions())
        self.status, self.version, self.final, self._cancelled = "", None, {}, False
        self.evaluation = ""
        self.curves.clear()
        self.progress.setValue(0)
        self.report.setText("")
        self.log.clear()
        self.state_label.setText("starting the trainer…")
        self._set_running(True)
        self.proc.start("defectssft", args, cwd=str(self.root))
        return True

    def cancel(self) -> None:
        """Ask the trainer to stop (SIGTERM): it saves a checkpoint and exits."""
        if self.proc.running():
            self._cancelled = True
            self.state_label.setText("stopping: the trainer saves its checkpoint…")
            self.proc.terminate()

    def _on_event(self, ev: dict) -> None:
        kind = ev.get("event")
        step = float(ev.get("step", 0) or 0)
        steps = float(ev.get("steps", 0) or 0)
        if steps:
            self.curves.steps = int(steps)
            self.progress.setValue(int(100 * min(1.0, step / steps)))
        if kind == "step" and "loss" in ev:
            self.curves.add_loss(step, float(ev["loss"]))
            eta = ev.get("eta_s")
            eta_text = f", about {_duration(float(eta))} left" if eta is not None else ""
            self.state_label.setText(
                f"step {int(step)}/{int(steps)}, loss {ev['loss']:.3f}{eta_text}"
            )
        acc = next((ev[k] for k in ACCURACY_KEYS if isinstance(ev.get(k), (int, float))), None)
        if kind == "eval" and acc is not None:
            self.curves.add_accuracy(step, float(acc))
        if isinstance(ev.get("version"), str):
            self.version = ev["version"]
        if kind == "stopped":
            self.status = "interrupted"
        if kind in ("done", "model"):
            self.final.update(ev)
            if isinstance(ev.get("status"), str):
                self.status = ev["status"]

    def _on_text(self, line: str) -> None:
        self.log.appendPlainText(line)

    def _on_finished(self, code: int, error: str) -> None:
        self._set_running(False)
        new = sorted(set(self._versions()) - self._versions_before)
        if self.version is None and new:
            self.version = new[-1]
        if code != 0 and not self._cancelled:
            self.status = "failed"
            self._fail(f"training failed: {error or f'exit code {code}'}")
        else:
            self.status = self.status or ("interrupted" if self._cancelled else "completed")
            self.state_label.setText(
                f"training {self.status}" + (f": model {self.version}" if self.version else "")
            )
            self.show_report(self._report_text())
            if self.version:
                self.progress.setValue(100 if self.status == "completed" else self.progress.value())
                self.modelTrained.emit(self.version)
        self.export_button.setEnabled(self._latest_version() is not None)
        self.runFinished.emit(self.status, code)
        if self.status == "completed" and self.version and self.auto_evaluate:
            self.evaluate(self.version)

    # ------------------------------------------------------------ evaluation
    def evaluate(self, version: str) -> bool:
        """``defectssft evaluate PROJECT --model VERSION``: test-split metrics and report."""
        if self.eval_proc.running():
            return False
        self.evaluation = ""
        self.export_button.setEnabled(False)
        self.state_label.setText(f"evaluating {version} on the test split…")
        self.eval_proc.start(
            "defectssft", ["evaluate", str(self.root), "--model", version], cwd=str(self.root)
        )
        return True

    def _on_eval_finished(self, code: int, error: str) -> None:
        if code == 0:
            # The first line is the summary; per-class lines and the table stay in the log.
            self.evaluation = next(
                (line for line in self.eval_proc.lines if "test split" in line), "evaluated"
            )
            self.state_label.setText(f"training {self.status}: model {self.version} evaluated")
        else:
            self.evaluation = f"not evaluated: {error or f'exit code {code}'}"
            self.state_label.setText(f"training {self.status}: model {self.version}")
        self.show_report(self._report_text())
        self.export_button.setEnabled(not self.proc.running())
        self.evaluationFinished.emit(code)

    def show_report(self, text: str) -> None:
        self.report.setText(text)
        lines = text.count("\n") + 1 if text else 0
        self.report.setMinimumHeight(self.report.fontMetrics().lineSpacing() * lines + 4)

    def _report_text(self) -> str:
        lines = []
        metrics = {
            k: v
            for k, v in self.final.items()
            if isinstance(v, (int, float)) and k not in ("step", "steps", "elapsed_s")
        }
        if metrics:
            lines.append("validation: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if self.version:
            folder = self.root / "models" / self.version
            report = next(
                (
                    p
                    for p in (
                        folder / "eval" / "report.html",
                        folder / "eval" / "report.md",
                        folder / "eval",
                    )
                    if p.exists()
                ),
                None,
            )
            lines.append(f"model {self.version} in {folder}")
            if report is not None:
                lines.append(f"evaluation report: {report}")
        if self.evaluation:
            lines.append(self.evaluation)
        return "\n".join(lines)

    # ------------------------------------------------------------ export
    def export(self, version: str | None = None) -> bool:
        version = version or self.version or self._latest_version()
        if version is None:
            self._fail("no model to export yet: train one first")
            return False
        if self.export_proc.running() or self.proc.running() or self.eval_proc.running():
            return False
        self.onnx_path = ""
        self.state_label.setText(f"exporting {version} to ONNX…")
        self.export_button.setEnabled(False)
        self._export_version = version
        self.export_proc.start(
            "defectssft", ["export", str(self.root), "--model", version], cwd=str(self.root)
        )
        return True

    def _on_export_finished(self, code: int, error: str) -> None:
        self.export_button.setEnabled(True)
        if code != 0:
            self._fail(f"export failed: {error or f'exit code {code}'}")
            self.exportFinished.emit(code, "")
            return
        path = ""
        for line in self.export_proc.lines:
            m = re.search(r"--model (\S+\.onnx)", line) or re.search(r"(\S+\.onnx)", line)
            if m:
                path = m.group(1)
        if not path:
            found = sorted((self.root / "models" / self._export_version).glob("*.onnx"))
            path = str(found[0]) if found else ""
        self.onnx_path = path
        self.state_label.setText(f"exported: {path}")
        self.exportFinished.emit(code, path)

    # ------------------------------------------------------------ helpers
    def _versions(self) -> list[str]:
        try:
            with Project.open(self.root) as project:
                return [m["version"] for m in project.models()]
        except DefectssftError:
            return []

    def _latest_version(self) -> str | None:
        versions = self._versions()
        return max(versions) if versions else None

    def _fail(self, message: str) -> None:
        self.state_label.setText(f"error: {message}")

    def shutdown(self) -> None:
        """Stop child processes (the window is closing); the trainer saves on SIGTERM."""
        for proc in (self.proc, self.export_proc, self.eval_proc):
            if proc.running():
                proc.terminate()
                if not proc.proc.waitForFinished(15000):
                    proc.kill()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"
