"""The New project wizard: folder, images and label rule, classes with hotkeys and the OK class,
the sensor's bit depth (with a preview), then what the import will do, mapped before anything is
written.

Pages only collect choices; the core checks them (``defectssft.new_project``,
``defectssft.import_plan``) and the wizard creates the project on Finish. The import itself is
run by the window on a pool thread (``MainWindow.run_import_plan``), like any other import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from defectssft.errors import DefectssftError
from defectssft.import_plan import (
    NEW,
    ImportPlan,
    ImportScan,
    default_target,
    plan_import,
    scan_import,
)
from defectssft.new_project import check_project_folder, create_project
from defectssft.project import Project
from defectssft_gui.import_dialog import MappingTable, RuleChooser, error_label
from defectssft_gui.viewer import to_display

PREVIEW_SIZE = 220


def synthetic_12bit(size: int = PREVIEW_SIZE) -> np.ndarray:
    """A 12-bit test image in a 16-bit array: a ramp, a bright disc and a faint scratch."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 600 + 2400 * x / size
    img += 1000 * (((x - size * 0.62) ** 2 + (y - size * 0.4) ** 2) < (size * 0.18) ** 2)
    img -= 500 * (np.abs(y - 0.55 * x - size * 0.45) < 2)
    return np.clip(img, 0, 4095).astype(np.uint16)


def first_16bit_image(paths: list[str], limit: int = 200) -> np.ndarray | None:
    """The first 16-bit image among the files to import (looks at ``limit`` files at most)."""
    from defectssft.ingest import expand_paths
    from defectssft_line.preprocess import ImageDecodeError, read_image

    try:
        files = expand_paths(paths)[:limit]
    except DefectssftError:
        return None
    for f in files:
        if f.suffix.lower() not in (".png", ".tif", ".tiff"):
            continue
        try:
            img = read_image(f)
        except (ImageDecodeError, OSError, ValueError):
            continue
        if img.dtype == np.uint16:
            return img
    return None


class FolderPage(QWizardPage):
    def __init__(self, wizard: NewProjectWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Project folder")
        self.setSubTitle(
            "A new or empty folder. The project keeps its own copy of every image, so the "
            "folder your images are in stays as it is."
        )
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("e.g. /data/projects/line-3")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.check = QLabel("")
        self.check.setWordWrap(True)
        self.use_beside = QPushButton("")
        self.use_beside.setVisible(False)
        self.use_beside.clicked.connect(self._take_beside)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.check)
        lay.addWidget(self.use_beside)
        lay.addStretch(1)
        self.folder.textChanged.connect(self._changed)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the new project")
        if folder:
            self.folder.setText(folder)

    def _changed(self) -> None:
        text = self.folder.text().strip()
        self.use_beside.setVisible(False)
        if not text:
            self.check.setText("")
        else:
            c = check_project_folder(text)
            self.check.setText(c.message())
            self.check.setStyleSheet("" if c.can_create else "color: #d62728;")
            if c.kind == "images":
                self.use_beside.setText(
                    f"Create the project in {c.beside} and import these {c.images} images"
                )
                self.use_beside.setVisible(True)
        self.completeChanged.emit()

    def _take_beside(self) -> None:
        c = check_project_folder(self.folder.text().strip())
        self.wiz.images_page.paths.setText(str(c.path))
        self.folder.setText(str(c.beside))

    def isComplete(self) -> bool:  # noqa: N802 - Qt
        text = self.folder.text().strip()
        return bool(text) and check_project_folder(text).can_create


class ImagesPage(QWizardPage):
    def __init__(self, wizard: NewProjectWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Images to import")
        self.setSubTitle(
            "Optional: a folder (or files) to import now, and where their labels come from. "
            "You will see what the import does before anything is written."
        )
        self.paths = QLineEdit()
        self.paths.setPlaceholderText("leave empty to import later (File → Import)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.rule = RuleChooser()
        self.found = QLabel("")
        self.found.setWordWrap(True)
        self.error = error_label()
        row = QHBoxLayout()
        row.addWidget(self.paths, 1)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.addRow("Images", row)
        form.addRow("Labels from", self.rule)
        form.addRow(self.found)
        form.addRow(self.error)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to import")
        if folder:
            self.paths.setText(folder)

    def path_list(self) -> list[str]:
        return [p.strip() for p in self.paths.text().split(";") if p.strip()]

    def validatePage(self) -> bool:  # noqa: N802 - Qt
        """Scan (file names only: a new project holds nothing to compare with)."""
        self.error.setText("")
        self.wiz.scan = None
        if not self.path_list():
            return True
        try:
            self.wiz.scan = scan_import(self.path_list(), self.rule.spec(), hash_files=False)
        except DefectssftError as e:
            self.error.setText(str(e))
            return False
        return True


class ClassesPage(QWizardPage):
    COLUMNS = ("Class", "Hotkey")

    def __init__(self, wizard: NewProjectWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Classes")
        self.setSubTitle(
            "One row per class, with the key that labels an image with it. Classes found in "
            "the images are filled in; add, rename or remove rows. Which class is a good part?"
        )
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        add = QPushButton("Add class")
        add.clicked.connect(lambda: self.add_row("", ""))
        remove = QPushButton("Remove class")
        remove.clicked.connect(self._remove_row)
        self.ok_combo = QComboBox()
        self.ok_combo.setToolTip("The good-part class: defect scores and verdicts are against it")
        self.error = error_label()
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        form = QFormLayout()
        form.addRow("OK (good part) class", self.ok_combo)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        lay.addLayout(form)
        lay.addWidget(self.error)
        self.table.itemChanged.connect(lambda _i: self._refresh_ok())
        self._seeded_from: object = None

    def initializePage(self) -> None:  # noqa: N802 - Qt
        scan = self.wiz.scan
        if scan is self._seeded_from and self.table.rowCount():
            return  # came back: keep what the user typed
        self._seeded_from = scan
        self.table.setRowCount(0)
        names: list[str] = []
        ok = None
        if scan is not None:
            for label, g in sorted(
                scan.groups.items(), key=lambda kv: (kv[0] is None, kv[0] or "")
            ):
                target = default_target(label, [], None, g.at_root)
                if target.startswith(NEW) and target.removeprefix(NEW) not in names:
                    names.append(target.removeprefix(NEW))
            plan = plan_import(scan, [], None)
            ok = plan.ok_new
        for i, name in enumerate(names):
            self.add_row(name, str(i + 1) if i < 9 else "")
        self._refresh_ok(ok)

    def add_row(self, name: str, hotkey: str) -> None:
        r = self.table.rowCount()
        self.table.blockSignals(True)
        self.table.insertRow(r)
        self.table.setItem(r, 0, QTableWidgetItem(name))
        self.table.setItem(r, 1, QTableWidgetItem(hotkey))
        self.table.blockSignals(False)
        self._refresh_ok()

    def _remove_row(self) -> None:
        r = self.table.currentRow()
        if r >= 0:
            self.table.removeRow(r)
            self._refresh_ok()

    def rows(self) -> list[tuple[str, str]]:
        out = []
        for r in range(self.table.rowCount()):
            name = (self.table.item(r, 0).text() if self.table.item(r, 0) else "").strip()
            key = (self.table.item(r, 1).text() if self.table.item(r, 1) else "").strip()
            if name:
                out.append((name, key))
        return out

    def _refresh_ok(self, prefer: str | None = None) -> None:
        current = prefer or self.ok_combo.currentData()
        self.ok_combo.blockSignals(True)
        self.ok_combo.clear()
        self.ok_combo.addItem("(none: every class is a defect type)", None)
        for name, _ in self.rows():
            self.ok_combo.addItem(name, name)
        i = self.ok_combo.findData(current)
        self.ok_combo.setCurrentIndex(max(0, i))
        self.ok_combo.blockSignals(False)

    def set_ok(self, name: str | None) -> None:
        self.ok_combo.setCurrentIndex(max(0, self.ok_combo.findData(name)))

    def validatePage(self) -> bool:  # noqa: N802 - Qt
        from defectssft.classes import validate_class_name
        from defectssft_gui.actions import shortcuts_for

        reserved = {k for keys in shortcuts_for(None).values() for k in keys}
        seen: dict[str, str] = {}
        names = []
        for name, key in self.rows():
            try:
                validate_class_name(name)
            except DefectssftError as e:
                self.error.setText(str(e))
                return False
            if name in names:
                self.error.setText(f"class {name!r} is listed twice")
                return False
            names.append(name)
            if key:
                seq = QKeySequence(key)
                if seq.isEmpty() or seq.count() != 1:
                    self.error.setText(f"class {name}: {key!r} is not a key")
                    return False
                key = seq.toString()
                if key in reserved:
                    self.error.setText(
                        f"class {name}: key {key} is already the shortcut of an action"
                    )
                    return False
                if key in seen:
                    self.error.setText(f"classes {seen[key]} and {name} both use key {key}")
                    return False
                seen[key] = name
        self.error.setText("")
        return True


class SensorPage(QWizardPage):
    def __init__(self, wizard: NewProjectWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("Sensor bit depth")
        self.setSubTitle(
            "Bits per pixel the camera really uses. 12-bit cameras often write 16-bit files "
            "whose values stop at 4095: with 16 here such images look almost black."
        )
        self.depth = QSpinBox()
        self.depth.setRange(8, 16)
        self.depth.setValue(16)
        self.depth.setSuffix(" bit")
        self.image = QLabel()
        self.image.setFixedSize(PREVIEW_SIZE, PREVIEW_SIZE)
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.raw = synthetic_12bit()
        self.from_import = False
        form = QFormLayout(self)
        form.addRow("Sensor bit depth", self.depth)
        form.addRow(self.image)
        form.addRow(self.caption)
        self.depth.valueChanged.connect(self.render)

    def initializePage(self) -> None:  # noqa: N802 - Qt
        found = first_16bit_image(self.wiz.images_page.path_list())
        self.from_import = found is not None
        self.raw = found if found is not None else synthetic_12bit()
        if found is not None and int(found.max()) < 4096 and self.depth.value() == 16:
            self.depth.setValue(12)  # the files say so
        self.render()

    def render(self) -> None:
        depth = self.depth.value()
        img = to_display(self.raw, depth)
        pm = QPixmap.fromImage(img).scaled(
            PREVIEW_SIZE,
            PREVIEW_SIZE,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        self.image.setPixmap(pm)
        what = (
            "the first 16-bit image to import"
            if self.from_import
            else "a 12-bit test image (values 0-4095)"
        )
        self.caption.setText(f"Preview: {what}, shown as the app and training will at {depth} bit.")


class PreviewPage(QWizardPage):
    def __init__(self, wizard: NewProjectWizard) -> None:
        super().__init__()
        self.wiz = wizard
        self.setTitle("What the import will do")
        self.setSubTitle("Each label found, how many images, and the class they go to. Change any.")
        self.table = MappingTable()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.error = error_label()
        lay = QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.summary)
        lay.addWidget(self.error)
        self.table.mappingChanged.connect(self._update)

    def initializePage(self) -> None:  # noqa: N802 - Qt
        scan = self.wiz.scan
        classes = [n for n, _ in self.wiz.classes_page.rows()]
        ok = self.wiz.classes_page.ok_combo.currentData()
        if scan is None:
            self.table.setRowCount(0)
            self.summary.setText(
                f"No images to import now. The project gets {len(classes)} classes"
                + (f", OK class {ok}" if ok else "")
                + ". Import later with File → Import folder."
            )
            return
        self.table.show_scan(scan, classes, ok)

    def plan(self) -> ImportPlan | None:
        scan = self.wiz.scan
        if scan is None:
            return None
        classes = [n for n, _ in self.wiz.classes_page.rows()]
        ok = self.wiz.classes_page.ok_combo.currentData()
        return plan_import(scan, classes, ok, self.table.mapping())

    def _update(self) -> None:
        try:
            plan = self.plan()
        except DefectssftError as e:
            self.error.setText(str(e))
            return
        self.error.setText("")
        if plan is None:
            return
        lines = [line.strip() for line in plan.summary_lines()]
        self.summary.setText("\n".join(lines[:1] + lines[len(plan.rows) + 1 :]))

    def validatePage(self) -> bool:  # noqa: N802 - Qt
        return self.wiz.finish()


class NewProjectWizard(QWizard):
    """Create a project; ``project`` and ``plan`` (the import to run, or None) afterwards."""

    def __init__(self, folder: str | Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("New project")
        self.setWizardStyle(QWizard.WizardStyle.ClassicStyle)
        self.resize(760, 600)
        self.project: Project | None = None
        self.plan: ImportPlan | None = None
        self.scan: ImportScan | None = None
        self.folder_page = FolderPage(self)
        self.images_page = ImagesPage(self)
        self.classes_page = ClassesPage(self)
        self.sensor_page = SensorPage(self)
        self.preview_page = PreviewPage(self)
        for page in (
            self.folder_page,
            self.images_page,
            self.classes_page,
            self.sensor_page,
            self.preview_page,
        ):
            self.addPage(page)
        if folder is not None:
            self.folder_page.folder.setText(str(folder))

    def finish(self) -> bool:
        """Create the project from the pages; False (reason on the last page) if it cannot be."""
        page = self.preview_page
        try:
            plan = page.plan()
            self.project = create_project(
                self.folder_page.folder.text().strip(),
                classes=[(n, k or None) for n, k in self.classes_page.rows()],
                ok_class=self.classes_page.ok_combo.currentData(),
                bit_depth=self.sensor_page.depth.value(),
            )
        except DefectssftError as e:
            page.error.setText(str(e))
            return False
        self.plan = plan
        return True
