"""Import with a preview (the mapping table), and the import history with undo.

The logic is the core's (``defectssft.import_plan``: scan, plan, apply; ``import_log``: list,
undo); these widgets show it. Scans and undos run on a pool thread; nothing is written until
the user presses Import, and then by the window (``MainWindow.run_import_plan``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QThreadPool, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from defectssft.errors import DefectssftError
from defectssft.import_plan import (
    IGNORE,
    NEW,
    UNLABELED,
    ImportPlan,
    ImportScan,
    default_target,
    plan_import,
    sanitize_class_name,
    scan_import,
)
from defectssft.project import Project
from defectssft_gui.workers import Task, start_task

# (shown text, rule kind) for the rule chooser; the regex comes from its own field.
RULES = (
    ("No labels (import unlabeled)", None),
    ("Sub-folder names (good/, scratch/ …)", "folder"),
    ("File name pattern (regex, first group)", "filename"),
    ("YOLO label files (labels/<name>.txt)", "yolo"),
)
DEFAULT_REGEX = r"^(.+?)_\d+\.\w+$"


def error_label() -> QLabel:
    label = QLabel("")
    label.setObjectName("error")
    label.setStyleSheet("color: #d62728;")
    label.setWordWrap(True)
    return label


class RuleChooser(QWidget):
    """Which rule reads the labels: none, sub-folder names, filename regex, YOLO files."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        for text, kind in RULES:
            self.combo.addItem(text, kind)
        self.regex = QLineEdit(DEFAULT_REGEX)
        self.regex.setToolTip(
            "The first (group) of this regex, searched in the file name, is the class"
        )
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo, 1)
        lay.addWidget(self.regex, 1)
        self.combo.currentIndexChanged.connect(self._sync)
        self.regex.textChanged.connect(lambda _t: self.changed.emit())
        self._sync()

    def _sync(self) -> None:
        self.regex.setVisible(self.combo.currentData() == "filename")
        self.changed.emit()

    def set_rule(self, spec: str | None) -> None:
        kind = None if spec is None else spec.split(":", 1)[0]
        self.combo.setCurrentIndex(max(0, self.combo.findData(kind)))
        if kind == "filename" and spec is not None:
            self.regex.setText(spec.split(":", 1)[1])

    def spec(self) -> str | None:
        kind = self.combo.currentData()
        if kind == "filename":
            return f"filename:{self.regex.text()}"
        return kind


class MappingTable(QTableWidget):
    """One row per label the scan found: files, already stored, and where they go (a combo)."""

    mappingChanged = Signal()
    COLUMNS = ("Found", "Images", "Already in project", "Import as")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(self.COLUMNS), parent)
        self.setHorizontalHeaderLabels(self.COLUMNS)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.labels: list[str | None] = []

    def show_scan(
        self,
        scan: ImportScan,
        classes: list[str],
        ok_class: str | None,
        mapping: dict[str | None, str] | None = None,
    ) -> None:
        mapping = mapping or {}
        self.labels = sorted(scan.groups, key=lambda k: (k is None, k or ""))
        self.setRowCount(len(self.labels))
        for r, label in enumerate(self.labels):
            g = scan.groups[label]
            found = "(no label)" if label is None else label
            if g.at_root:
                found += "  (the imported folder itself)"
            for c, text in enumerate(
                (found, str(g.files), str(g.in_project) if scan.hashed else "–")
            ):
                item = QTableWidgetItem(text)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.setItem(r, c, item)
            combo = QComboBox()
            for name in classes:
                combo.addItem(f"class {name}" + (" (OK)" if name == ok_class else ""), name)
            new_name = sanitize_class_name(label) if label else None
            if new_name and new_name not in classes:
                combo.addItem(f"new class {new_name}", NEW + new_name)
            combo.addItem("import unlabeled", UNLABELED)
            combo.addItem("skip these files", IGNORE)
            target = mapping.get(label) or default_target(label, classes, ok_class, g.at_root)
            if combo.findData(target) < 0:
                combo.addItem(
                    f"new class {target.removeprefix(NEW)}" if target.startswith(NEW) else target,
                    target,
                )
            combo.setCurrentIndex(combo.findData(target))
            combo.currentIndexChanged.connect(lambda _i: self.mappingChanged.emit())
            self.setCellWidget(r, 3, combo)
        self.mappingChanged.emit()

    def mapping(self) -> dict[str | None, str]:
        return {
            label: str(self.cellWidget(r, 3).currentData()) for r, label in enumerate(self.labels)
        }

    def set_target(self, label: str | None, target: str) -> None:
        """Choose where ``label`` goes, as a user would (tests, scripts)."""
        combo = self.cellWidget(self.labels.index(label), 3)
        i = combo.findData(target)
        if i < 0:
            combo.addItem(target, target)
            i = combo.count() - 1
        combo.setCurrentIndex(i)


class ImportDialog(QDialog):
    """Choose files or folders and a label rule, see what the import will do, map, import."""

    scanned = Signal()

    def __init__(
        self,
        project: Project,
        paths: list[str] | None = None,
        label_from: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.project = project
        self.plan: ImportPlan | None = None
        self.scan: ImportScan | None = None
        self._task: Task | None = None
        self._generation = 0
        self.setWindowTitle(f"Import images — {project.name}")
        self.resize(760, 560)
        self.paths_edit = QLineEdit("; ".join(paths or []))
        self.paths_edit.setPlaceholderText("folders, files or glob patterns, separated by ';'")
        folder = QPushButton("Folder…")
        folder.clicked.connect(self._pick_folder)
        files = QPushButton("Files…")
        files.clicked.connect(self._pick_files)
        self.rule = RuleChooser()
        self.rule.set_rule(label_from)
        self.relabel = QCheckBox(
            "Relabel images already in the project (kept in the label history)"
        )
        self.relabel.setToolTip(
            "Without this, images already imported keep their label and are only counted"
        )
        self.scan_button = QPushButton("Preview")
        self.scan_button.clicked.connect(self.start_scan)
        self.table = MappingTable()
        self.table.mappingChanged.connect(self._update_summary)
        self.summary = QLabel(
            "Press Preview to see what the import will do; nothing is written yet."
        )
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = error_label()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.import_button = self.buttons.addButton(
            "Import", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.import_button.setEnabled(False)
        self.buttons.accepted.connect(self.accept_plan)
        self.buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.paths_edit, 1)
        row.addWidget(folder)
        row.addWidget(files)
        form = QFormLayout()
        form.addRow("Images", row)
        form.addRow("Labels from", self.rule)
        form.addRow("", self.relabel)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.scan_button)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.summary)
        lay.addWidget(self.error)
        lay.addWidget(self.buttons)
        self.rule.changed.connect(self._stale)
        self.paths_edit.textChanged.connect(lambda _t: self._stale())
        self.relabel.toggled.connect(lambda _b: self._update_summary())

    # ------------------------------------------------------------------ inputs
    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a folder of images")
        if folder:
            self.paths_edit.setText(folder)

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Import images", "", "Images (*.jpg *.jpeg *.png *.bmp *.tif *.tiff)"
        )
        if files:
            self.paths_edit.setText("; ".join(files))

    def paths(self) -> list[str]:
        return [p.strip() for p in self.paths_edit.text().split(";") if p.strip()]

    def _stale(self) -> None:
        self.scan = None
        self.import_button.setEnabled(False)

    # ------------------------------------------------------------------ scan
    def start_scan(self) -> None:
        """Scan on a pool thread (hashing finds the images already stored); writes nothing."""
        self.error.setText("")
        self._generation += 1
        generation = self._generation
        self.scan_button.setEnabled(False)
        self.summary.setText("Looking at the files…")
        task = Task(
            scan_import,
            self.paths(),
            self.rule.spec(),
            self.project,
            hash_files=True,
            with_progress=True,
        )
        task.signals.progress.connect(
            lambda d, t: self.summary.setText(f"Looking at the files… {d}/{t}")
        )
        self._task = task

        def done(scan: ImportScan) -> None:
            if generation != self._generation:
                return
            self.scan_button.setEnabled(True)
            self.scan = scan
            self.table.show_scan(scan, self.project.class_names(), self.project.ok_class)
            self.import_button.setEnabled(True)
            self.scanned.emit()

        def failed(message: str) -> None:
            if generation != self._generation:
                return
            self.scan_button.setEnabled(True)
            self.summary.setText("")
            self.error.setText(message)
            self.scanned.emit()

        start_task(QThreadPool.globalInstance(), task, done, failed)

    def current_plan(self) -> ImportPlan | None:
        """The plan for the table as it is; None (and the reason shown) when it cannot be made."""
        if self.scan is None:
            return None
        try:
            plan = plan_import(
                self.scan,
                self.project.class_names(),
                self.project.ok_class,
                self.table.mapping(),
                relabel=self.relabel.isChecked(),
            )
        except DefectssftError as e:
            self.error.setText(str(e))
            return None
        self.error.setText("")
        return plan

    def _update_summary(self) -> None:
        plan = self.current_plan()
        if plan is None:
            return
        counts = plan.counts()
        parts = [f"{n} → {k}" for k, n in counts.items() if not k.startswith(":")]
        if counts.get(":unlabeled"):
            parts.append(f"{counts[':unlabeled']} unlabeled")
        if counts.get(":skipped"):
            parts.append(f"{counts[':skipped']} skipped")
        lines = [f"{len(plan.scan.files)} images: " + ", ".join(parts) + "."]
        if plan.new_classes:
            ok = f" ({plan.ok_new} becomes the OK class)" if plan.ok_new else ""
            lines.append(f"New classes: {', '.join(plan.new_classes)}{ok}.")
        if plan.scan.duplicates:
            lines.append(f"{plan.scan.duplicates} images are already in the project.")
        n = plan.relabel_candidates()
        if n:
            lines.append(
                f"{n} of them carry another label: "
                + ("they will be relabeled." if plan.relabel else "kept (tick Relabel to change).")
            )
        lines += plan.warnings()
        self.summary.setText("\n".join(lines))

    def accept_plan(self) -> None:
        plan = self.current_plan()
        if plan is None:
            if self.scan is None:
                self.error.setText("press Preview first: nothing is imported without a preview")
            return
        self.plan = plan
        self.accept()

    def done(self, result: int) -> None:  # noqa: A003 - QDialog.done
        self._generation += 1  # a scan still running is ignored
        super().done(result)


class ImportsDialog(QDialog):
    """Recorded imports; undo one (remove its images, or only its labels)."""

    changed = Signal()
    COLUMNS = (
        "#",
        "When",
        "Who",
        "Images",
        "Labels from",
        "Added",
        "Labeled",
        "Relabeled",
        "State",
    )

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.setWindowTitle(f"Imports — {project.name}")
        self.resize(900, 420)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.undo_images = QPushButton("Undo: remove its images")
        self.undo_images.setToolTip(
            "Delete the images this import added and put back labels it changed; "
            "labels changed by a person since are kept"
        )
        self.undo_labels = QPushButton("Undo its labels only")
        self.undo_labels.setToolTip(
            "Keep the images; put back the labels the import set or changed"
        )
        self.undo_images.clicked.connect(lambda: self.undo_selected("images"))
        self.undo_labels.clicked.connect(lambda: self.undo_selected("labels"))
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.error = error_label()
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.close)
        row = QHBoxLayout()
        row.addWidget(self.undo_images)
        row.addWidget(self.undo_labels)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(self.error)
        lay.addWidget(close)
        self._task: Task | None = None
        self.load()

    def load(self) -> None:
        from defectssft.import_log import list_imports

        rows = list_imports(self.project)
        self.ids = [r["id"] for r in rows]
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            s: dict[str, Any] = r["summary"]
            state = f"undone ({r['undone']['mode']})" if r["undone"] else ""
            values = (
                r["id"],
                r["time"][:19].replace("T", " "),
                r["who"],
                _paths_text(r["paths"]),
                r["label_from"] or "—",
                s.get("added", "?"),
                s.get("labeled", "?"),
                s.get("relabeled", 0),
                state,
            )
            for c, v in enumerate(values):
                item = QTableWidgetItem(str(v))
                if c == 3:
                    item.setToolTip("\n".join(r["paths"]))
                self.table.setItem(i, c, item)
        self.table.resizeColumnsToContents()
        self.table.setColumnWidth(3, min(self.table.columnWidth(3), 240))
        if rows:
            self.table.selectRow(len(rows) - 1)

    def select_import(self, import_id: int) -> None:
        self.table.selectRow(self.ids.index(import_id))

    def selected_id(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return self.ids[rows[0].row()] if rows else None

    def undo_selected(self, mode: str) -> None:
        """Undo the selected import on a pool thread; one line in the dialog if it cannot be."""
        from defectssft.import_log import undo_import

        import_id = self.selected_id()
        if import_id is None:
            self.error.setText("select the import to undo")
            return
        self.error.setText("")
        self.status.setText(f"undoing import {import_id}…")
        who = str(self.project.get_setting("gui.who", "operator"))
        task = Task(undo_import, self.project, import_id, mode=mode, who=who)
        self._task = task

        def done(result: Any) -> None:
            what = f"removed {result.removed} images, " if mode == "images" else ""
            kept = f", kept {result.kept} labels changed since" if result.kept else ""
            self.status.setText(
                f"import {import_id} undone: {what}put back {result.restored} labels{kept}"
            )
            self.load()
            self.changed.emit()

        def failed(message: str) -> None:
            self.status.setText("")
            self.error.setText(message)
            self.changed.emit()

        start_task(QThreadPool.globalInstance(), task, done, failed)


def _paths_text(paths: list[str]) -> str:
    """What an import read, short: 'neu-det', or 'kos_005.jpg … (+7)'."""
    names = [Path(p).name or p for p in paths]
    if len(names) <= 2:
        return "; ".join(names)
    return f"{names[0]} … (+{len(names) - 1})"
