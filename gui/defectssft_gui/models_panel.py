"""The Models panel: every model version with its test metrics (counts and 95 % intervals), which
one is production, two versions side by side, promote / roll back, the evaluation report.

Promotion is the core's (``defectssft.promote``): **Promote** is ``maybe_promote`` (the rule of
``defectssft promote``: not worse than production on the same test split), **Roll back / force**
is ``force_promote`` (``defectssft promote --force``). Both evaluate models, so they run on a pool
thread; the panel only shows what the project stores (``metrics["test"]`` of each version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QThreadPool, QUrl, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from defectssft.metrics import operating_point, wilson_interval
from defectssft.project import Project
from defectssft_gui.workers import Task, start_task

COLUMNS = (
    "version",
    "status",
    "created",
    "test images",
    "accuracy",
    "escapes",
    "overkill",
    "threshold",
)
GALLERY_MAX = 60


def rate_text(k: int, n: int) -> str:
    """``k/n = p % [low–high %]`` with the 95 % Wilson interval (few parts, wide interval)."""
    if n <= 0:
        return "—"
    low, high = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.1f} % [{100 * low:.1f}–{100 * high:.1f} %]"


def test_counts(test: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(errors, parts) of accuracy errors, escapes and overkill from a ``metrics["test"]``."""
    out: dict[str, tuple[int, int]] = {}
    n = int(test.get("n", 0))
    if n:
        out["errors"] = (round((1.0 - float(test.get("accuracy", 0.0))) * n), n)
    insp, op = test.get("inspection") or {}, test.get("operating_point") or {}
    if insp and "escape_rate" in op:
        nd, ng = int(insp.get("n_defective", 0)), int(insp.get("n_good", 0))
        out["escapes"] = (round(float(op["escape_rate"]) * nd), nd)
        out["overkill"] = (round(float(op["overkill_rate"]) * ng), ng)
    return out


def model_row(m: dict[str, Any]) -> list[str]:
    """The table cells of one version."""
    test = (m.get("metrics") or {}).get("test") or {}
    counts = test_counts(test)
    status = {"production": "★ production"}.get(m.get("status") or "", m.get("status") or "")
    if not test:
        return [
            m["version"],
            status,
            str(m.get("created", ""))[:16],
            "not evaluated",
            "",
            "",
            "",
            "",
        ]
    err, n = counts.get("errors", (0, 0))
    thr = (test.get("operating_point") or {}).get("threshold")
    saved = operating_point({"operating_point": (m.get("metrics") or {}).get("operating_point")})
    threshold = "" if thr is None else f"{float(thr):.4f}"
    if saved is not None:  # set in the operating-point panel / `defectssft thresholds`
        threshold = f"{saved['ng']:.4f} saved" + (f" (evaluated {threshold})" if threshold else "")
    return [
        m["version"],
        status,
        str(m.get("created", ""))[:16],
        str(test.get("n", "")),
        rate_text(n - err, n),
        rate_text(*counts["escapes"]) if "escapes" in counts else "no OK class",
        rate_text(*counts["overkill"]) if "overkill" in counts else "—",
        threshold,
    ]


def confusion_html(test: dict[str, Any]) -> str:
    cm, classes = test.get("confusion_matrix"), test.get("classes") or []
    if not cm:
        return "<i>not evaluated</i>"
    head = "".join(f"<th>{c}</th>" for c in classes)
    rows = "".join(
        f"<tr><th>{classes[i]}</th>"
        + "".join(
            f"<td align='right' style='background:{'#c8e6c9' if i == j else ('#ffcdd2' if v else 'transparent')}'>{v}</td>"
            for j, v in enumerate(r)
        )
        + "</tr>"
        for i, r in enumerate(cm)
    )
    return (
        "<table border='1' cellspacing='0' cellpadding='4'>"
        f"<tr><th>true \\ predicted</th>{head}</tr>{rows}</table>"
    )


def disagreements(project: Project, a: str, b: str) -> list[dict[str, Any]]:
    """Images both versions predicted where they suggest different classes (or verdicts)."""
    from defectssft.queries import model_classes
    from defectssft.verdicts import version_verdicts

    pa, pb = project.predictions(a), project.predictions(b)
    ca, cb = model_classes(project, a), model_classes(project, b)
    va, vb = version_verdicts(project, a), version_verdicts(project, b)
    out = []
    for image_id in sorted(set(pa) & set(pb)):
        xa, xb = pa[image_id], pb[image_id]
        if len(xa) != len(ca) or len(xb) != len(cb):
            continue
        sa = ca[max(range(len(xa)), key=xa.__getitem__)]
        sb = cb[max(range(len(xb)), key=xb.__getitem__)]
        if sa != sb or va.get(image_id) != vb.get(image_id):
            rec = project.get_image(image_id)
            out.append(
                {
                    "image_id": image_id,
                    "path": str(rec.path),
                    "label": rec.label,
                    a: (sa, va.get(image_id)),
                    b: (sb, vb.get(image_id)),
                }
            )
    return out


class ModelsDialog(QDialog):
    """Non-modal; ``productionChanged(version)`` after a promotion or a roll back."""

    productionChanged = Signal(str)
    busyChanged = Signal(bool)
    operatingPointRequested = Signal(str)  # the window opens the operating-point panel

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)
        self._tasks: set[Task] = set()
        self.last_message = ""
        self.setWindowTitle(f"Models — {project.name}")
        self.resize(1100, 700)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip(
            "Test-split metrics: count / parts = rate [95 % Wilson interval]. Escapes: defective "
            "parts the line would pass; overkill: good parts it would reject."
        )
        self.promote_button = QPushButton("Promote (if not worse)")
        self.promote_button.setToolTip(
            "defectssft promote VERSION: evaluate it and production on today's test split; "
            "promote only when the escape rate is not higher and overkill within tolerance"
        )
        self.force_button = QPushButton("Roll back / force…")
        self.force_button.setToolTip(
            "defectssft promote VERSION --force: make it production without comparing"
        )
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("defectssft evaluate VERSION (writes the report)")
        self.report_button = QPushButton("Show report")
        self.operating_button = QPushButton("Operating point…")
        self.operating_button.setToolTip(
            "NG threshold and UNSURE band of the selected version: histogram, escapes, overkill, "
            "review rate; save, export with them"
        )
        self.operating_button.clicked.connect(
            lambda: self.operatingPointRequested.emit(self.selected_version() or "")
        )
        self.promote_button.clicked.connect(lambda: self.promote(force=False))
        self.force_button.clicked.connect(lambda: self.promote(force=True, ask=True))
        self.evaluate_button.clicked.connect(self.evaluate)
        self.report_button.clicked.connect(self.show_report)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        for b in (
            self.promote_button,
            self.force_button,
            self.evaluate_button,
            self.report_button,
            self.operating_button,
        ):
            buttons.addWidget(b)
        buttons.addStretch(1)
        versions = QWidget()
        vl = QVBoxLayout(versions)
        vl.addWidget(self.table, 1)
        vl.addLayout(buttons)
        vl.addWidget(self.message)

        self.report = QTextBrowser()
        self.report.setOpenExternalLinks(False)

        self.compare_a, self.compare_b = QComboBox(), QComboBox()
        self.compare_a.currentIndexChanged.connect(lambda _i: self.compare())
        self.compare_b.currentIndexChanged.connect(lambda _i: self.compare())
        self.side = [QTextBrowser(), QTextBrowser()]
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.ViewMode.IconMode)
        self.gallery.setIconSize(QSize(128, 128))
        self.gallery.setGridSize(QSize(150, 190))
        self.gallery.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.gallery.setWordWrap(True)
        self.gallery_title = QLabel("")
        compare = QWidget()
        cl = QGridLayout(compare)
        cl.addWidget(self.compare_a, 0, 0)
        cl.addWidget(self.compare_b, 0, 1)
        cl.addWidget(self.side[0], 1, 0)
        cl.addWidget(self.side[1], 1, 1)
        cl.addWidget(self.gallery_title, 2, 0, 1, 2)
        cl.addWidget(self.gallery, 3, 0, 1, 2)
        cl.setRowStretch(1, 2)
        cl.setRowStretch(3, 3)

        self.tabs = QTabWidget()
        self.tabs.addTab(versions, "Versions")
        self.tabs.addTab(compare, "Compare")
        self.tabs.addTab(self.report, "Report")
        lay = QVBoxLayout(self)
        lay.addWidget(self.tabs)
        self.table.itemSelectionChanged.connect(self._sync_buttons)
        self.reload()

    # ------------------------------------------------------------ contents
    def reload(self) -> None:
        models = self.project.models()
        keep = self.selected_version()
        self.table.setRowCount(len(models))
        for r, m in enumerate(models):
            for c, text in enumerate(model_row(m)):
                item = QTableWidgetItem(text)
                if m.get("status") == "production":
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        versions = [m["version"] for m in models]
        if keep in versions:
            self.select(keep)
        elif versions:
            self.select(versions[-1])
        prod = self.project.production_model()
        for box, default in (
            (self.compare_a, prod),
            (self.compare_b, versions[-1] if versions else None),
        ):
            current = box.currentText() or default
            box.blockSignals(True)
            box.clear()
            box.addItems(versions)
            if current in versions:
                box.setCurrentText(current)
            box.blockSignals(False)
        self._sync_buttons()
        self.compare()

    def select(self, version: str) -> None:
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == version:
                self.table.selectRow(r)
                return

    def selected_version(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.table.item(rows[0].row(), 0).text() if rows else None

    def _sync_buttons(self) -> None:
        v = self.selected_version()
        busy = bool(self._tasks)
        prod = self.project.production_model()
        for b in (self.promote_button, self.force_button, self.evaluate_button):
            b.setEnabled(v is not None and not busy)
        self.promote_button.setEnabled(v is not None and not busy and v != prod)
        self.force_button.setEnabled(v is not None and not busy and v != prod)
        self.report_button.setEnabled(v is not None and self._report_path(v) is not None)
        self.operating_button.setEnabled(v is not None)

    def _report_path(self, version: str) -> Path | None:
        path = Path(self.project.models_dir) / version / "eval" / "report.md"
        return path if path.is_file() else None

    # ------------------------------------------------------------ actions
    def _say(self, text: str) -> None:
        self.last_message = text
        self.message.setText(text)

    def _run(self, what: str, fn: Any, *args: Any, done: Any) -> None:
        task = Task(fn, *args)
        self._tasks.add(task)
        self._say(f"{what}… (evaluating on the test split, this takes a while on a CPU)")
        self.busyChanged.emit(True)
        self._sync_buttons()

        def ok(result: Any) -> None:
            self._tasks.discard(task)
            self.busyChanged.emit(False)
            done(result)
            self.reload()

        def failed(msg: str) -> None:
            self._tasks.discard(task)
            self.busyChanged.emit(False)
            self._say(f"error: {what}: {msg}")
            self._sync_buttons()

        start_task(self.pool, task, ok, failed)

    def promote(self, force: bool = False, ask: bool = False, version: str | None = None) -> None:
        """Promote the selected version with the CLI's rule; ``force`` is a roll back."""
        from defectssft.promote import force_promote, maybe_promote

        version = version or self.selected_version()
        if version is None or self._tasks:
            return
        if ask:
            answer = QMessageBox.question(
                self,
                "Make production without comparing?",
                f"Publish {version} to exports/production.onnx now, without comparing it to "
                f"production ({self.project.production_model() or 'none'})?",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
        before = self.project.production_model()

        def done(result: tuple[bool, str]) -> None:
            self._say(result[1])
            now = self.project.production_model()
            if now != before and now is not None:
                self.productionChanged.emit(now)

        if force:
            self._run(
                f"making {version} production", force_promote, self.project, version, done=done
            )
        else:
            self._run(f"promoting {version}", maybe_promote, self.project, version, done=done)

    def evaluate(self, version: str | None = None) -> None:
        from defectssft.evaluate import evaluate_project_model

        version = version or self.selected_version()
        if version is None or self._tasks:
            return

        def done(ev: Any) -> None:
            self._say(f"{version} evaluated; report: {ev.report}")

        self._run(f"evaluating {version}", evaluate_project_model, self.project, version, done=done)

    def show_report(self, version: str | None = None) -> bool:
        """Render ``models/VERSION/eval/report.md`` (Markdown, plots, gallery) in the Report tab."""
        version = version or self.selected_version()
        path = self._report_path(version) if version else None
        if path is None:
            self._say(f"no report for {version} yet: Evaluate it first")
            return False
        self.report.setSearchPaths([str(path.parent)])
        self.report.document().setBaseUrl(QUrl.fromLocalFile(str(path.parent) + "/"))
        self.report.setMarkdown(path.read_text(encoding="utf-8"))
        self.tabs.setCurrentWidget(self.report)
        return True

    # ------------------------------------------------------------ compare
    def compare(self) -> None:
        a, b = self.compare_a.currentText(), self.compare_b.currentText()
        models = {m["version"]: m for m in self.project.models()}
        for box, v in zip(self.side, (a, b), strict=True):
            m = models.get(v)
            if m is None:
                box.setHtml("")
                continue
            test = (m.get("metrics") or {}).get("test") or {}
            cells = model_row(m)
            box.setHtml(
                f"<h3>{v} {cells[1]}</h3>"
                f"<p>test images {cells[3] or '—'}<br>accuracy {cells[4] or '—'}<br>"
                f"escapes {cells[5] or '—'}<br>overkill {cells[6] or '—'}<br>"
                f"threshold {cells[7] or '—'}</p>{confusion_html(test)}"
            )
        self.gallery.clear()
        if not a or not b or a == b:
            self.gallery_title.setText("Pick two different versions to see where they disagree.")
            return
        diff = disagreements(self.project, a, b)
        common = len(set(self.project.predictions(a)) & set(self.project.predictions(b)))
        self.gallery_title.setText(
            f"{len(diff)} of the {common} image(s) both versions predicted (their test split and "
            f"what each predicted while shown): where {a} and {b} disagree in suggestion or verdict"
            + (f", showing {GALLERY_MAX}" if len(diff) > GALLERY_MAX else "")
        )
        for d in diff[:GALLERY_MAX]:
            (sa, va), (sb, vb) = d[a], d[b]
            text = f"#{d['image_id']} {d['label'] or 'unlabeled'}\n{a}: {sa} {va or ''}\n{b}: {sb} {vb or ''}"
            item = QListWidgetItem(QIcon(self._thumb(d["path"])), text)
            item.setData(Qt.ItemDataRole.UserRole, d["image_id"])
            self.gallery.addItem(item)

    def _thumb(self, path: str) -> QPixmap:
        from defectssft_gui.thumbs import make_thumbnail, rgb_to_qimage
        from defectssft_line.preprocess import ImageDecodeError

        try:
            depth = int(self.project.get_setting("input.bit_depth", 16) or 16)
            return QPixmap.fromImage(rgb_to_qimage(make_thumbnail(path, 128, depth)))
        except (ImageDecodeError, OSError, ValueError):
            return QPixmap()
