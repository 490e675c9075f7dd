"""Dialogs: the label book (classes and their examples), settings/shortcuts.

The label book also deletes and merges classes (``defectssft.class_ops``).

Each dialog edits the project through the core (``Project.add_class/update_class/rename_class``,
``set_setting``) and reports a bad value as one line in the dialog instead of saving it.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from defectssft.errors import DefectssftError
from defectssft.project import Project
from defectssft_gui.actions import (
    ACTIONS,
    SHORTCUTS_SETTING,
    shortcuts_for,
)
from defectssft_gui.thumbs import load_thumbnail, thumb_dir

EXAMPLES_SETTING = "labelbook.examples"
EXAMPLE_COUNT = 6


def _error_label() -> QLabel:
    label = QLabel("")
    label.setObjectName("error")
    label.setStyleSheet("color: #d62728;")
    label.setWordWrap(True)
    return label


class LabelBookDialog(QDialog):
    """Per class: name, description, colour, hotkey, OK flag and example images."""

    classesChanged = Signal()
    classRenamed = Signal(str, str)  # old, new: emitted before classesChanged

    COLUMNS = ("Name", "Hotkey", "Colour", "OK class", "Description")

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.setWindowTitle(f"Label book — {project.name}")
        self.resize(820, 560)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.currentCellChanged.connect(self._row_changed)
        self.examples = QListWidget()
        self.examples.setViewMode(QListWidget.ViewMode.IconMode)
        self.examples.setIconSize(QSize(96, 96))
        self.examples.setMaximumHeight(150)
        self.examples_title = QLabel("Examples")
        self.new_name = QLineEdit()
        self.new_name.setPlaceholderText("new class name")
        add = QPushButton("Add class")
        add.clicked.connect(self.add_class)
        self.rename_edit = QLineEdit()
        self.rename_edit.setPlaceholderText("new name of the selected class")
        self.rename_button = QPushButton("Rename class")
        self.rename_button.setToolTip(
            "Labels, history and predictions keep pointing at the "
            "class; models trained before keep the old name"
        )
        self.rename_button.clicked.connect(self.rename_class)
        self.merge_into = QComboBox()
        self.merge_into.setToolTip("The class that takes the selected class's labels")
        self.merge_button = QPushButton("Merge into")
        self.merge_button.setToolTip(
            "Give the selected class's images this class (label history kept), then delete it"
        )
        self.merge_button.clicked.connect(lambda: self.merge_class())
        self.delete_button = QPushButton("Delete class")
        self.delete_button.setToolTip(
            "Delete the selected class; images that carry it become unlabeled (history kept)"
        )
        self.delete_button.clicked.connect(lambda: self.delete_class(ask=True))
        self.error = _error_label()
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Close
        )
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.close)
        adder = QHBoxLayout()
        adder.addWidget(self.new_name)
        adder.addWidget(add)
        renamer = QHBoxLayout()
        renamer.addWidget(self.rename_edit)
        renamer.addWidget(self.rename_button)
        remover = QHBoxLayout()
        remover.addWidget(self.merge_button)
        remover.addWidget(self.merge_into, 1)
        remover.addWidget(self.delete_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addLayout(renamer)
        lay.addLayout(remover)
        lay.addLayout(adder)
        lay.addWidget(self.examples_title)
        lay.addWidget(self.examples)
        lay.addWidget(self.error)
        lay.addWidget(buttons)
        self.load()

    def load(self) -> None:
        classes = self.project.classes()
        self.table.setRowCount(len(classes))
        for r, c in enumerate(classes):
            name = QTableWidgetItem(c.name)
            name.setFlags(name.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.table.setItem(r, 0, name)
            self.table.setItem(r, 1, QTableWidgetItem(c.hotkey or ""))
            colour = QPushButton(c.colour or "")
            colour.setStyleSheet(f"background: {c.colour};" if c.colour else "")
            colour.clicked.connect(lambda _=False, b=colour: self._pick_colour(b))
            self.table.setCellWidget(r, 2, colour)
            ok = QCheckBox()
            ok.setChecked(c.is_ok)
            self.table.setCellWidget(r, 3, ok)
            self.table.setItem(r, 4, QTableWidgetItem(c.description))
        self.table.resizeColumnsToContents()
        self.merge_into.clear()
        self.merge_into.addItems([c.name for c in classes])
        if classes:
            self.table.setCurrentCell(0, 1)
            self._show_examples(0)

    def _row_changed(self, row: int, _col: int = 0, previous: int = -1, _pcol: int = 0) -> None:
        if row != previous:
            item = self.table.item(row, 0) if row >= 0 else None
            self.rename_edit.setText(item.text() if item is not None else "")
            self._show_examples(row)

    def select_class(self, class_name: str) -> None:
        """Make ``class_name`` the selected row (tests, scripts)."""
        row = next(
            r for r in range(self.table.rowCount()) if self.table.item(r, 0).text() == class_name
        )
        self.table.setCurrentCell(row, 0)

    def _pick_colour(self, button: QPushButton) -> None:
        colour = QColorDialog.getColor(QColor(button.text() or "#888888"), self)
        if colour.isValid():
            button.setText(colour.name())
            button.setStyleSheet(f"background: {colour.name()};")

    def set_cell(self, class_name: str, column: str, value: str | bool) -> None:
        """Edit one cell as a user would (tests, scripts)."""
        row = next(
            r for r in range(self.table.rowCount()) if self.table.item(r, 0).text() == class_name
        )
        col = self.COLUMNS.index(column)
        if column == "Colour":
            button = self.table.cellWidget(row, col)
            button.setText(str(value))
        elif column == "OK class":
            self.table.cellWidget(row, col).setChecked(bool(value))
        else:
            self.table.item(row, col).setText(str(value))

    def save(self) -> bool:
        """Write changed fields with ``Project.update_class``; False (and a message) if invalid."""
        reserved = {k for keys in shortcuts_for(self.project).values() for k in keys}
        rows = []
        hotkeys: dict[str, str] = {}
        for r in range(self.table.rowCount()):
            name = self.table.item(r, 0).text()
            hotkey = self.table.item(r, 1).text().strip() or None
            colour = self.table.cellWidget(r, 2).text().strip() or None
            is_ok = self.table.cellWidget(r, 3).isChecked()
            desc = self.table.item(r, 4).text().strip()
            if hotkey is not None:
                seq = QKeySequence(hotkey)
                if seq.isEmpty() or seq.count() != 1 or seq.toString() == "":
                    return self._fail(f"class {name}: {hotkey!r} is not a key")
                hotkey = seq.toString()
                if hotkey in reserved:
                    return self._fail(
                        f"class {name}: key {hotkey} is already the shortcut of "
                        "an action (see Settings)"
                    )
                if hotkey in hotkeys:
                    return self._fail(f"classes {hotkeys[hotkey]} and {name} both use key {hotkey}")
                hotkeys[hotkey] = name
            if colour is not None and not QColor(colour).isValid():
                return self._fail(f"class {name}: {colour!r} is not a colour (use e.g. #d62728)")
            rows.append((name, hotkey, colour, is_ok, desc))
        if sum(r[3] for r in rows) > 1:
            return self._fail("only one class can be the OK class")
        try:
            for name, hotkey, colour, is_ok, desc in rows:
                self.project.update_class(
                    name, hotkey=hotkey, colour=colour, is_ok=is_ok, description=desc
                )
        except DefectssftError as e:
            return self._fail(str(e))
        self.error.setText("")
        self.classesChanged.emit()
        return True

    def add_class(self) -> bool:
        name = self.new_name.text().strip()
        try:
            self.project.add_class(name)
        except DefectssftError as e:
            return self._fail(str(e))
        self.new_name.clear()
        self.error.setText("")
        self.load()
        self.classesChanged.emit()
        return True

    def rename_class(self) -> bool:
        """Rename the selected class to the name typed (``Project.rename_class``).

        Only the name cell changes, so other edits not yet saved stay in the table.
        """
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        if item is None:
            return self._fail("select the class to rename")
        old = item.text()
        who = str(self.project.get_setting("gui.who", "operator"))
        try:
            info = self.project.rename_class(old, self.rename_edit.text(), who=who)
        except DefectssftError as e:
            return self._fail(str(e))
        self.error.setText("")
        if info.name == old:
            return True
        item.setText(info.name)
        self._show_examples(row)
        self.classRenamed.emit(old, info.name)
        self.classesChanged.emit()
        return True

    def _selected_name(self) -> str | None:
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else None

    def merge_class(self, into: str | None = None) -> bool:
        """Merge the selected class into ``into`` (default: the one chosen beside the button)."""
        from defectssft.class_ops import merge_class

        name = self._selected_name()
        if name is None:
            return self._fail("select the class to merge")
        into = into if into is not None else self.merge_into.currentText()
        who = str(self.project.get_setting("gui.who", "operator"))
        try:
            merge_class(self.project, name, into, who=who)
        except DefectssftError as e:
            return self._fail(str(e))
        return self._removed()

    def delete_class(self, unlabel: bool = False, ask: bool = False) -> bool:
        """Delete the selected class; with images carrying it only if ``unlabel`` (or, with
        ``ask``, the user agrees to unlabel them)."""
        from defectssft.class_ops import delete_class

        name = self._selected_name()
        if name is None:
            return self._fail("select the class to delete")
        n = len(self.project.query_images(label=name)) if ask else 0
        if ask and n and name != self.project.ok_class:
            answer = QMessageBox.question(
                self,
                "Delete class",
                f"{n} images carry {name}. Remove their labels (kept in the label history) and "
                "delete the class? To move them to another class, use Merge into.",
            )
            unlabel = answer == QMessageBox.StandardButton.Yes
            if not unlabel:
                return False
        who = str(self.project.get_setting("gui.who", "operator"))
        try:
            delete_class(self.project, name, who=who, unlabel=unlabel)
        except DefectssftError as e:
            return self._fail(str(e))
        return self._removed()

    def _removed(self) -> bool:
        self.error.setText("")
        self.load()
        self.classesChanged.emit()
        return True

    def _fail(self, message: str) -> bool:
        self.error.setText(message)
        return False

    def example_ids(self, class_name: str) -> list[int]:
        """Images chosen as examples (Label → Mark as example), else the first labeled ones."""
        chosen = (self.project.get_setting(EXAMPLES_SETTING, {}) or {}).get(class_name, [])
        ids = [int(i) for i in chosen][:EXAMPLE_COUNT]
        if len(ids) < EXAMPLE_COUNT:
            more = self.project.query_images(label=class_name, limit=EXAMPLE_COUNT * 2)
            ids += [r.id for r in more if r.id not in ids][: EXAMPLE_COUNT - len(ids)]
        return ids

    def _show_examples(self, row: int) -> None:
        self.examples.clear()
        item = self.table.item(row, 0) if row >= 0 else None
        if item is None:
            return
        name = item.text()
        ids = self.example_ids(name)
        self.examples_title.setText(
            f"Examples of {name}" if ids else f"No labeled {name} images yet"
        )
        depth = int(self.project.get_setting("input.bit_depth", 16) or 16)
        for image_id in ids:
            try:
                rec = self.project.get_image(image_id)
                img = load_thumbnail(
                    rec.sha256, str(rec.path), thumb_dir(self.project.root), bit_depth=depth
                )
            except (DefectssftError, ValueError, OSError):
                continue
            self.examples.addItem(QListWidgetItem(QIcon(QPixmap.fromImage(img)), f"#{image_id}"))


class SettingsDialog(QDialog):
    """Who labels, the uncertain threshold, and every action's shortcut (stored per project)."""

    saved = Signal()

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Settings")
        self.resize(560, 640)
        self.who = QLineEdit(str(project.get_setting("gui.who", "operator")))
        self.margin = QDoubleSpinBox()
        self.margin.setRange(0.0, 1.0)
        self.margin.setSingleStep(0.05)
        self.margin.setValue(float(project.get_setting("gui.uncertain_margin", 0.2)))
        self.table = QTableWidget(len(ACTIONS), 2)
        self.table.setHorizontalHeaderLabels(["Action", "Shortcut(s), separated by ';'"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        current = shortcuts_for(project)
        self._names = list(ACTIONS)
        for r, name in enumerate(self._names):
            item = QTableWidgetItem(ACTIONS[name][0].replace("&", ""))
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            item.setData(Qt.ItemDataRole.UserRole, name)
            self.table.setItem(r, 0, item)
            self.table.setItem(r, 1, QTableWidgetItem("; ".join(current[name])))
        self.table.resizeColumnToContents(0)
        self.error = _error_label()
        form = QFormLayout()
        form.addRow("Your name (label history)", self.who)
        form.addRow("Uncertain below margin", self.margin)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save
            | QDialogButtonBox.StandardButton.RestoreDefaults
            | QDialogButtonBox.StandardButton.Close
        )
        buttons.button(QDialogButtonBox.StandardButton.Save).clicked.connect(self.save)
        buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults).clicked.connect(
            self.restore_defaults
        )
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.error)
        lay.addWidget(buttons)

    def set_shortcut(self, action: str, text: str) -> None:
        self.table.item(self._names.index(action), 1).setText(text)

    def restore_defaults(self) -> None:
        for r, name in enumerate(self._names):
            self.table.item(r, 1).setText("; ".join(shortcuts_for(None)[name]))

    def save(self) -> bool:
        overrides: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        hotkeys = {c.hotkey: c.name for c in self.project.classes() if c.hotkey}
        for r, name in enumerate(self._names):
            keys = []
            for part in self.table.item(r, 1).text().split(";"):
                part = part.strip()
                if not part:
                    continue
                seq = QKeySequence(part)
                if seq.isEmpty() or seq.toString() == "":
                    return self._fail(f"{name}: {part!r} is not a key sequence")
                key = seq.toString()
                if key in owner:
                    return self._fail(f"key {key} is used by both {owner[key]} and {name}")
                if key in hotkeys:
                    return self._fail(
                        f"key {key} is the hotkey of class {hotkeys[key]} "
                        "(change it in the label book)"
                    )
                owner[key] = name
                keys.append(key)
            if keys != shortcuts_for(None)[name]:  # the platform's defaults included
                overrides[name] = keys
        who = self.who.text().strip()
        if not who:
            return self._fail("your name cannot be empty (it goes into the label history)")
        self.project.set_setting(SHORTCUTS_SETTING, overrides)
        self.project.set_setting("gui.who", who)
        self.project.set_setting("gui.uncertain_margin", round(self.margin.value(), 4))
        self.error.setText("")
        self.saved.emit()
        return True

    def _fail(self, message: str) -> bool:
        self.error.setText(message)
        return False
