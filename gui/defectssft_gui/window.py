"""The main window: browse, view and label the images of one project.

Built in ``_setup_widgets / _setup_actions / _setup_menus`` (as labelme's app); all project work
goes through the core (``Project``, ``import_paths``, ``HotFolder``); anything slow runs on a pool
thread or in a child process (``workers``). Every label is committed the moment it is given.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QSize, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from defectssft.errors import DefectssftError
from defectssft.project import ClassInfo, Project
from defectssft_gui import queries
from defectssft_gui.actions import ACTIONS, new_action, shortcuts_for
from defectssft_gui.gallery import ImageListModel
from defectssft_gui.labeling import LabelSession
from defectssft_gui.queries import Row
from defectssft_gui.thumbs import THUMB_SIZE, ThumbnailLoader, thumb_dir
from defectssft_gui.viewer import ImageViewer
from defectssft_gui.workers import HotFolderThread, JsonProcess, Task, start_task

EXAMPLES_SETTING = "labelbook.examples"
WHO_SETTING = "gui.who"
PREDICT_BATCH_SETTING = "gui.predict_batch"  # images per batch (and per saved transaction)
PREFETCH_AHEAD = 3


def _load_rows(
    project: Project, spec: str, sort: str
) -> tuple[str | None, list[Row], dict[str, Any]]:
    """Runs on the query thread: the current model, the grid rows and the project counts."""
    version = queries.current_model(project)
    return version, queries.fetch_rows(project, spec, sort, version), project.status()


class MainWindow(QMainWindow):
    """One project at a time. Signals let tests and the benchmark wait without sleeping."""

    rowsLoaded = Signal(int)  # number of rows of the current filter
    labelsSaved = Signal(list)  # image ids just written
    predictionsDone = Signal(int)  # exit code of the predict process
    predictAllDone = Signal(dict)  # predict-all summary (``cancelled``), or {"error": message}
    camReady = Signal(str)  # image path whose heat map is shown
    importDone = Signal(object)  # ImportSummary
    errorShown = Signal(str)

    def __init__(self, project: Project | None = None, quiet: bool = False) -> None:
        super().__init__()
        self.project: Project | None = None
        self.quiet = quiet  # errors go to the status bar and last_error only (tests, benchmark)
        self.last_error = ""
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self.query_pool = QThreadPool(self)  # grid queries never wait behind an import
        self.query_pool.setMaxThreadCount(1)
        self._query_gen = 0
        self._hot_counts: dict[str, int] = {}
        self._tasks: set[Task] = set()
        self.session: LabelSession | None = None
        self.hot: HotFolderThread | None = None
        self.loader: ThumbnailLoader | None = None
        self.model: ImageListModel | None = None
        self.predict_proc = JsonProcess(self)
        self.predict_proc.finished.connect(self._predict_finished)
        self.predict_proc.event.connect(self._predict_event)
        self._predict_all: tuple[Task, threading.Event] | None = None  # running predict-all
        self._after_rows_note = ""  # shown once the next refresh has replaced the status line
        self.model_version: str | None = None
        self.class_actions: list[QAction] = []
        self.actions_by_name: dict[str, QAction] = {}
        self._refresh_timer = QTimer(self, singleShot=True, interval=800)
        self._refresh_timer.timeout.connect(self.refresh)
        self.setWindowTitle("defectssft")
        self.resize(1280, 800)
        self._setup_widgets()
        self._setup_actions()
        self._setup_menus()
        if project is not None:
            self.open_project(project)
        self._update_enabled()

    # ================================================================== setup
    def _setup_widgets(self) -> None:
        self.filter_box = QComboBox()
        self.filter_box.setToolTip("Which images to list")
        self.sort_box = QComboBox()
        for text, key in (
            ("newest first", "-capture"),
            ("oldest first", "capture"),
            ("defect score ↓", "score"),
            ("defect score ↑", "-score"),
        ):
            self.sort_box.addItem(text, key)
        self.count_label = QLabel("")
        self.filter_box.currentIndexChanged.connect(lambda _i: self.refresh())
        self.sort_box.currentIndexChanged.connect(lambda _i: self.refresh())

        self.grid = QListView()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setLayoutMode(QListView.LayoutMode.Batched)
        self.grid.setBatchSize(200)
        self.grid.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.grid.setGridSize(QSize(THUMB_SIZE + 16, THUMB_SIZE + 34))
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.grid.setWordWrap(False)
        self.grid.setTextElideMode(Qt.TextElideMode.ElideRight)

        top = QHBoxLayout()
        top.addWidget(QLabel("Show"))
        top.addWidget(self.filter_box, 1)
        top.addWidget(QLabel("Sort"))
        top.addWidget(self.sort_box)
        top.addWidget(self.count_label)
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(4, 4, 4, 4)
        lv.addLayout(top)
        lv.addWidget(self.grid, 1)

        self.viewer = ImageViewer()
        self.info_label = QLabel("No project open. File → Open project…")
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info_label.setWordWrap(True)
        self.pred_label = QLabel("")
        self.pred_label.setObjectName("prediction")
        self.level_slider = QSlider(Qt.Orientation.Horizontal)
        self.window_slider = QSlider(Qt.Orientation.Horizontal)
        for s, tip in (
            (self.level_slider, "Brightness (window level)"),
            (self.window_slider, "Contrast (window width)"),
        ):
            s.setRange(1, 1000)
            s.setToolTip(tip)
            s.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.level_slider.setValue(500)
        self.window_slider.setValue(1000)
        self.level_slider.valueChanged.connect(self._levels_changed)
        self.window_slider.valueChanged.connect(self._levels_changed)
        levels = QHBoxLayout()
        levels.addWidget(QLabel("Brightness"))
        levels.addWidget(self.level_slider)
        levels.addWidget(QLabel("Contrast"))
        levels.addWidget(self.window_slider)

        self.class_bar = QHBoxLayout()
        self.accept_button = QPushButton("Accept suggestion")
        self.accept_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.accept_button.clicked.connect(self.accept_suggestion)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(4, 4, 4, 4)
        rv.addWidget(self.viewer, 1)
        rv.addWidget(self.info_label)
        rv.addWidget(self.pred_label)
        rv.addLayout(levels)
        bar = QHBoxLayout()
        bar.addLayout(self.class_bar, 1)
        bar.addWidget(self.accept_button)
        rv.addLayout(bar)

        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([560, 720])
        self.setCentralWidget(split)
        self.hot_label = QLabel("")
        self.statusBar().addPermanentWidget(self.hot_label)
        self.predict_bar = QProgressBar()
        self.predict_bar.setMaximumWidth(220)
        self.predict_bar.setFormat("predicting %v/%m")
        self.predict_bar.setVisible(False)
        self.predict_cancel_button = QPushButton("Cancel")
        self.predict_cancel_button.setToolTip("Stop the prediction after its current batch")
        self.predict_cancel_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.predict_cancel_button.clicked.connect(self.cancel_predict)
        self.predict_cancel_button.setVisible(False)
        self.statusBar().addPermanentWidget(self.predict_bar)
        self.statusBar().addPermanentWidget(self.predict_cancel_button)

    def _setup_actions(self) -> None:
        slots = {
            "open": self.choose_project,
            "import_files": self.choose_import_files,
            "import_folder": self.choose_import_folder,
            "watch": self.toggle_watch,
            "quit": self.close,
            "next": lambda: self.step(1),
            "prev": lambda: self.step(-1),
            "accept": self.accept_suggestion,
            "clear_label": lambda: self.label_selection(None),
            "undo": self.undo,
            "redo": self.redo,
            "next_useful": self.show_next_useful,
            "example": self.mark_example,
            "fit": self.viewer.fit,
            "one_to_one": self.viewer.one_to_one,
            "zoom_in": lambda: self.viewer.zoom(1.25),
            "zoom_out": lambda: self.viewer.zoom(0.8),
            "heatmap": self.toggle_heatmap,
            "reset_levels": self.reset_levels,
            "predict": self.run_predict,
            "predict_all": self.predict_all,
            "cancel_predict": self.cancel_predict,
            "train": self.open_training,
            "label_book": self.open_label_book,
            "settings": self.open_settings,
            "refresh": self.refresh,
        }
        for name, (text, _default, tip) in ACTIONS.items():
            action = new_action(
                self, text, slots[name], tip=tip, checkable=name in ("watch", "heatmap")
            )
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            self.addAction(action)
            self.actions_by_name[name] = action
        self.apply_shortcuts()

    def _setup_menus(self) -> None:
        a = self.actions_by_name
        menus = {
            "&File": ["open", "import_files", "import_folder", "watch", None, "quit"],
            "&Label": [
                "accept",
                "clear_label",
                "undo",
                "redo",
                None,
                "next",
                "prev",
                "next_useful",
                None,
                "example",
                "label_book",
            ],
            "&View": [
                "fit",
                "one_to_one",
                "zoom_in",
                "zoom_out",
                None,
                "heatmap",
                "reset_levels",
                "refresh",
            ],
            "&Model": ["predict", "predict_all", "cancel_predict", None, "train"],
            "&Settings": ["settings"],
        }
        for title, names in menus.items():
            menu = self.menuBar().addMenu(title)
            for name in names:
                if name is None:
                    menu.addSeparator()
                else:
                    menu.addAction(a[name])
        self.class_menu = self.menuBar().addMenu("&Classes")

    def apply_shortcuts(self) -> None:
        """(Re)read the shortcut table: defaults overridden by the project's settings."""
        table = shortcuts_for(self.project)
        for name, action in self.actions_by_name.items():
            keys = table.get(name, [])
            action.setShortcuts([QKeySequence(k) for k in keys])
            tip = ACTIONS[name][2]
            action.setToolTip(f"{tip} ({', '.join(keys)})" if keys else tip)

    # ================================================================== project
    def open_project(self, project: Project | str | Path) -> bool:
        try:
            if not isinstance(project, Project):
                project = Project.open(project)
        except DefectssftError as e:
            self.show_error(str(e))
            return False
        self.close_project()
        self.project = project
        who = str(project.get_setting(WHO_SETTING, "operator"))
        self.session = LabelSession(project, who=who)
        depth = int(project.get_setting("input.bit_depth", 16) or 16)
        self.viewer.bit_depth = depth
        self.loader = ThumbnailLoader(thumb_dir(project.root), bit_depth=depth, parent=self)
        self.model = ImageListModel(self.loader, parent=self)
        self.grid.setModel(self.model)
        self.grid.selectionModel().currentChanged.connect(self._current_changed)
        levels = project.get_setting("gui.levels")
        if isinstance(levels, list) and len(levels) == 2:
            self.viewer.set_window(float(levels[0]), float(levels[1]))
            self._sync_sliders()
        self.setWindowTitle(f"defectssft — {project.name} ({project.root})")
        self.reload_classes()
        self.apply_shortcuts()
        self.refresh()
        self._update_enabled()
        return True

    def close_project(self) -> None:
        self.stop_watch()
        if self._predict_all is not None:  # stops after its batch; its result is then ignored
            self._predict_all[1].set()
        if self.loader is not None:
            self.loader.close()
        if self.project is not None:
            self.project.close()
        self.project = None
        self.session = None

    def reload_classes(self) -> None:
        """Class buttons, class hotkey actions and filter entries from the project's classes."""
        assert self.project is not None
        classes = self.project.classes()
        self.model_version = queries.current_model(self.project)
        if self.model is not None:
            self.model.colours = {c.name: c.colour or "#dddddd" for c in classes}
        for action in self.class_actions:
            self.removeAction(action)
            action.deleteLater()
        self.class_actions = []
        self.class_menu.clear()
        while self.class_bar.count():
            item = self.class_bar.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        for c in classes:
            self._add_class_action(c)
        current = self.filter_box.currentData()
        self.filter_box.blockSignals(True)
        self.filter_box.clear()
        entries = [
            ("all images", "all"),
            ("unlabeled", "unlabeled"),
            ("next most useful", "useful"),
        ]
        entries += [(f"labeled {c.name}", f"class:{c.name}") for c in classes]
        entries += [(f"predicted {c.name}", f"pred:{c.name}") for c in classes]
        entries += [
            ("uncertain", "uncertain"),
            ("misclassified", "misclassified"),
            ("quarantined", "quarantined"),
        ]
        for text, key in entries:
            self.filter_box.addItem(text, key)
        i = self.filter_box.findData(current) if current else 0
        self.filter_box.setCurrentIndex(max(0, i))
        self.filter_box.blockSignals(False)

    def _add_class_action(self, c: ClassInfo) -> None:
        text = f"{c.hotkey}  {c.name}" if c.hotkey else c.name
        action = new_action(
            self,
            f"Label {c.name}",
            lambda _=False, n=c.name: self.label_selection(n),
            [c.hotkey] if c.hotkey else None,
            tip=c.description or f"Label as {c.name}",
        )
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.addAction(action)
        self.class_menu.addAction(action)
        self.class_actions.append(action)
        button = QPushButton(text)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        button.setToolTip(c.description or f"Label as {c.name}")
        if c.colour:
            button.setStyleSheet(f"border-left: 6px solid {c.colour}; padding: 4px 8px;")
        button.clicked.connect(action.trigger)
        self.class_bar.addWidget(button)

    def _update_enabled(self) -> None:
        has = self.project is not None
        for name, action in self.actions_by_name.items():
            if name not in ("open", "quit", "settings"):
                action.setEnabled(has)
        self.actions_by_name["settings"].setEnabled(has)
        self._sync_predict_ui()

    # ================================================================== listing
    def current_filter(self) -> str:
        return str(self.filter_box.currentData() or "all")

    def set_filter(self, spec: str, sort: str | None = None, top: bool = False) -> None:
        """Select filter ``spec`` (and ``sort``) and reload; QueryError-like errors are shown."""
        i = self.filter_box.findData(spec)
        if i < 0:
            self.show_error(f"unknown filter {spec!r}")
            return
        if sort is not None:
            j = self.sort_box.findData(sort)
            if j < 0:
                self.show_error(f"unknown sort {sort!r}")
                return
            self.sort_box.blockSignals(True)
            self.sort_box.setCurrentIndex(j)
            self.sort_box.blockSignals(False)
        self.filter_box.blockSignals(True)
        self.filter_box.setCurrentIndex(i)
        self.filter_box.blockSignals(False)
        self.refresh(top=top)

    def refresh(self, top: bool = False) -> None:
        """Reload the rows of the current filter on the query thread; ``rowsLoaded`` when shown.

        The current image stays current when it is still listed (``top``: go to the first row).
        A newer refresh supersedes one still running.
        """
        if self.project is None or self.model is None:
            return
        self._query_gen += 1
        gen = self._query_gen
        task = Task(
            _load_rows,
            self.project,
            self.current_filter(),
            str(self.sort_box.currentData() or "-capture"),
        )
        self._tasks.add(task)

        def done(result: tuple[str | None, list[Row], dict[str, Any]]) -> None:
            self._tasks.discard(task)
            if gen == self._query_gen and self.model is not None:
                self._show_rows(*result, top=top)

        def failed(msg: str) -> None:
            self._tasks.discard(task)
            if gen == self._query_gen:
                self.show_error(msg)

        start_task(self.query_pool, task, done, failed)

    def _show_rows(
        self, version: str | None, rows: list[Row], status: dict[str, Any], top: bool
    ) -> None:
        assert self.model is not None
        keep = None if top else self.current_row()
        self.model_version = version
        self.model.set_rows(rows)
        self.count_label.setText(f"{len(rows)} images")
        target = self.model.row_of(keep.image_id) if keep and keep.image_id is not None else None
        self.go_to(target if target is not None else 0)
        model = version or "no model yet"
        self.statusBar().showMessage(
            f"{status['images']} images, {status['labeled']} labeled, {status['unlabeled']} "
            f"unlabeled, {status['quarantined']} quarantined — model: {model}"
        )
        if self._after_rows_note:
            self.statusBar().showMessage(self._after_rows_note, 15000)
            self._after_rows_note = ""
        self.rowsLoaded.emit(len(rows))

    def current_row(self) -> Row | None:
        if self.model is None:
            return None
        idx = self.grid.currentIndex()
        return self.model.row(idx.row()) if idx.isValid() else None

    def selected_ids(self) -> list[int]:
        """Selected image ids in grid order; the current image when nothing else is selected."""
        if self.model is None:
            return []
        rows = sorted({i.row() for i in self.grid.selectionModel().selectedIndexes()})
        ids = [self.model.row(r).image_id for r in rows]
        ids = [i for i in ids if i is not None]
        if len(ids) <= 1:
            cur = self.current_row()
            return [cur.image_id] if cur is not None and cur.image_id is not None else []
        return ids

    def go_to(self, row: int) -> None:
        if self.model is None or self.model.total() == 0:
            self.viewer.show_path(None)
            self.info_label.setText("No images match this filter.")
            self.pred_label.setText("")
            return
        row = max(0, min(row, self.model.total() - 1))
        self.model.ensure_shown(row)
        idx = self.model.index(row)
        self.grid.selectionModel().setCurrentIndex(
            idx, QItemSelectionModel.SelectionFlag.ClearAndSelect
        )
        self.grid.scrollTo(idx)

    def step(self, delta: int) -> None:
        idx = self.grid.currentIndex()
        self.go_to((idx.row() if idx.isValid() else -1) + delta)

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if self.model is None or not current.isValid():
            return
        r = self.model.row(current.row())
        ahead = [
            self.model.row(i).path
            for i in range(
                current.row() + 1, min(self.model.total(), current.row() + 1 + PREFETCH_AHEAD)
            )
        ]
        if current.row() > 0:
            ahead.append(self.model.row(current.row() - 1).path)
        self.viewer.show_path(r.path, prefetch=ahead)
        self._show_info(r)
        if self.actions_by_name["heatmap"].isChecked():
            self.compute_heatmap()

    def _show_info(self, r: Row) -> None:
        if r.reason is not None:
            self.info_label.setText(f"{r.path}\nquarantined: {r.reason}")
            self.pred_label.setText("")
            return
        self.info_label.setText(
            f"#{r.image_id}  {r.name}  captured {r.capture}\nlabel: {r.label or '(none)'}"
        )
        if r.pred is not None and r.confidence is not None:
            self.pred_label.setText(
                f"model {self.model_version}: {r.pred} ({r.confidence:.1%}), defect score "
                f"{(r.score or 0):.3f} — press {self._keys('accept')} to accept"
            )
        else:
            self.pred_label.setText("no prediction (Model → Predict unlabeled / all images)")

    def _keys(self, action: str) -> str:
        seq = self.actions_by_name[action].shortcut()
        return seq.toString() if not seq.isEmpty() else "(no key)"

    # ================================================================== labeling
    def label_selection(self, label: str | None) -> None:
        """Label the selection (or the current image); a single image moves on to the next."""
        if self.session is None or self.model is None:
            return
        ids = self.selected_ids()
        if not ids:
            return
        try:
            self.session.apply(ids, label)
        except DefectssftError as e:
            self.show_error(str(e))
            return
        self._labels_written({i: label for i in ids})
        if len(ids) == 1:
            self.step(1)

    def _labels_written(self, labels: dict[int, str | None]) -> None:
        """Show labels just committed in the grid and the info line; emit ``labelsSaved``."""
        assert self.model is not None
        self.model.update_labels(labels)
        cur = self.current_row()
        if cur is not None and cur.image_id in labels:
            self._show_info(cur)
        self.labelsSaved.emit(list(labels))

    def accept_suggestion(self) -> None:
        """Give each selected image the model's predicted class (one transaction, one undo
        step for the whole selection)."""
        if self.session is None or self.model is None:
            return
        ids = self.selected_ids()
        preds: dict[int, str | None] = {}
        for image_id in ids:
            row = self.model.row_of(image_id)
            pred = self.model.row(row).pred if row is not None else None
            if pred is not None:
                preds[image_id] = pred
        if not preds:
            self.show_error("no model suggestion for this image (run Model → Predict first)")
            return
        try:
            self.session.apply_each(preds)
        except DefectssftError as e:
            self.show_error(str(e))
            return
        self._labels_written(preds)
        if len(ids) == 1:
            self.step(1)

    def undo(self) -> None:
        self._undo_redo(self.session.undo if self.session else None, "undo")

    def redo(self) -> None:
        self._undo_redo(self.session.redo if self.session else None, "redo")

    def _undo_redo(self, fn: Any, what: str) -> None:
        if fn is None or self.model is None:
            return
        try:
            change = fn()
        except DefectssftError as e:
            self.show_error(str(e))
            return
        if change is None:
            self.statusBar().showMessage(f"nothing to {what}", 3000)
            return
        labels = dict(change.before if what == "undo" else change.after)
        self.model.update_labels(labels)
        first = self.model.row_of(change.image_ids[0])
        if first is not None:
            self.go_to(first)
        cur = self.current_row()
        if cur is not None:
            self._show_info(cur)
        self.labelsSaved.emit(change.image_ids)

    def show_next_useful(self) -> None:
        """List unlabeled images most useful first and show the top one."""
        self.set_filter("useful", top=True)
        self.grid.setFocus()

    def mark_example(self) -> None:
        cur = self.current_row()
        if self.project is None or cur is None or cur.image_id is None:
            return
        if cur.label is None:
            self.show_error("label the image first: examples belong to a class")
            return
        examples = dict(self.project.get_setting(EXAMPLES_SETTING, {}) or {})
        ids = [i for i in examples.get(cur.label, []) if i != cur.image_id]
        examples[cur.label] = [cur.image_id, *ids][:12]
        self.project.set_setting(EXAMPLES_SETTING, examples)
        self.statusBar().showMessage(f"image #{cur.image_id} is an example of {cur.label}", 3000)

    # ================================================================== view
    def _levels_changed(self) -> None:
        level = self.level_slider.value() / 1000.0
        width = self.window_slider.value() / 1000.0
        self.viewer.set_window(level - width / 2, level + width / 2)

    def _sync_sliders(self) -> None:
        for s, v in (
            (self.level_slider, (self.viewer.low + self.viewer.high) / 2),
            (self.window_slider, self.viewer.high - self.viewer.low),
        ):
            s.blockSignals(True)
            s.setValue(round(v * 1000))
            s.blockSignals(False)

    def reset_levels(self) -> None:
        self.viewer.reset_window()
        self._sync_sliders()

    def toggle_heatmap(self) -> None:
        if self.actions_by_name["heatmap"].isChecked():
            self.compute_heatmap()
        else:
            self.viewer.clear_heatmap()

    def compute_heatmap(self) -> None:
        """Grad-CAM of the current image with the current model, on a pool thread."""
        cur = self.current_row()
        if self.project is None or cur is None or cur.image_id is None:
            return
        if self.model_version is None:
            self.show_error("no trained model yet: train one to see heat maps")
            self.actions_by_name["heatmap"].setChecked(False)
            return
        from defectssft.explain import grad_cam

        model_file = self.project.models_dir / self.model_version / "model.pt"
        path = cur.path
        task = Task(
            grad_cam,
            model_file,
            path,
            bit_depth=int(self.project.get_setting("input.bit_depth", 16) or 16),
        )
        self._tasks.add(task)

        def done(result: Any) -> None:
            self._tasks.discard(task)
            if self.viewer.path == path and self.actions_by_name["heatmap"].isChecked():
                if self.project is not None:  # a class renamed since training: today's name
                    result.classes = self.project.current_class_names(result.classes)
                self.viewer.set_heatmap(result.heat)
                self.pred_label.setText(
                    f"model {self.model_version}: {result.predicted} ({result.confidence:.1%}); "
                    f"heat map of {result.classes[result.class_index]}"
                )
                self.camReady.emit(path)

        def failed(msg: str) -> None:
            self._tasks.discard(task)
            self.actions_by_name["heatmap"].setChecked(False)
            self.show_error(f"heat map: {msg}")

        start_task(self.pool, task, done, failed)

    # ================================================================== import / watch
    def choose_project(self) -> None:
        from defectssft_gui.dialogs import NewProjectDialog

        folder = QFileDialog.getExistingDirectory(self, "Open or create a project folder")
        if not folder:
            return
        if (Path(folder) / "project.db").is_file():
            self.open_project(folder)
            return
        dlg = NewProjectDialog(folder, self)
        if dlg.exec() and dlg.project is not None:
            self.open_project(dlg.project)

    def choose_import_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Import images", "", "Images (*.jpg *.jpeg *.png *.bmp *.tif *.tiff)"
        )
        if files:
            self.import_paths(files)

    def choose_import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a folder of images")
        if folder:
            label_from = None
            answer = QMessageBox.question(
                self,
                "Labels from sub-folders?",
                "Use sub-folder names as labels (e.g. good/, scratch/)?",
            )
            if answer == QMessageBox.StandardButton.Yes:
                label_from = "folder"
            self.import_paths([folder], label_from=label_from)

    def import_paths(self, paths: list[str], label_from: str | None = None) -> None:
        """Import files/folders through ``defectssft.ingest.import_paths`` on a pool thread."""
        if self.project is None:
            return
        from defectssft.ingest import import_paths

        task = Task(
            import_paths,
            self.project,
            paths,
            label_from=label_from,
            source="gui",
            with_progress=True,
        )
        self._tasks.add(task)
        task.signals.progress.connect(
            lambda d, t: self.statusBar().showMessage(f"importing {d}/{t} files…")
        )

        def done(summary: Any) -> None:
            self._tasks.discard(task)
            self.statusBar().showMessage(
                f"imported {summary.added}, {summary.duplicates} duplicates, "
                f"{summary.quarantined} quarantined",
                8000,
            )
            if summary.new_classes:
                self.reload_classes()
            self.refresh()
            self.importDone.emit(summary)

        def failed(msg: str) -> None:
            self._tasks.discard(task)
            self.show_error(f"import: {msg}")

        start_task(self.pool, task, done, failed)

    def toggle_watch(self) -> None:
        if self.hot is not None:
            self.stop_watch()
            return
        folder = QFileDialog.getExistingDirectory(self, "Watch a hot folder")
        if folder:
            self.start_watch(folder)
        else:
            self.actions_by_name["watch"].setChecked(False)

    def start_watch(self, folder: str | Path) -> bool:
        if self.project is None:
            return False
        self.stop_watch()
        try:
            self.hot = HotFolderThread(self.project, folder, parent=self)
        except DefectssftError as e:
            self.actions_by_name["watch"].setChecked(False)
            self.show_error(str(e))
            return False
        self.hot.ingested.connect(self._hot_ingested)
        self.hot.start()
        self.actions_by_name["watch"].setChecked(True)
        self._hot_counts = {"added": 0, "duplicate": 0, "quarantined": 0}
        self.hot_label.setText(f"watching {folder}")
        return True

    def stop_watch(self) -> None:
        if self.hot is not None:
            self.hot.stop()
            self.hot.deleteLater()
            self.hot = None
        self.actions_by_name["watch"].setChecked(False)
        self.hot_label.setText("")

    def _hot_ingested(self, _path: str, status: str) -> None:
        self._hot_counts[status] = self._hot_counts.get(status, 0) + 1
        c = self._hot_counts
        folder = self.hot.folder if self.hot else ""
        self.hot_label.setText(
            f"watching {folder}: {c['added']} new, {c['duplicate']} dup, "
            f"{c['quarantined']} quarantined"
        )
        self._refresh_timer.start()

    # ================================================================== model
    def prediction_running(self) -> bool:
        """True while Predict unlabeled (child process) or Predict all (pool thread) runs."""
        return self._predict_all is not None or self.predict_proc.running()

    def run_predict(self) -> None:
        """Predict unlabeled images with the current model in a child process."""
        if self.project is None:
            return
        if self.prediction_running():
            self.statusBar().showMessage("prediction already running", 3000)
            return
        if queries.current_model(self.project) is None:
            self.show_error("no trained model yet: Model → Train first")
            return
        self.statusBar().showMessage("predicting…")
        self.predict_proc.start("defectssft_gui.predict", [str(self.project.root)])
        self._sync_predict_ui()

    def _predict_event(self, ev: dict) -> None:
        if ev.get("event") == "progress":
            self._predict_progress(int(ev.get("done", 0)), int(ev.get("total", 0)))

    def _predict_finished(self, code: int, error: str) -> None:
        self._sync_predict_ui()
        if code != 0:
            self.show_error(f"predict: {error or f'failed (exit code {code})'}")
        else:
            self.refresh()
        self.predictionsDone.emit(code)

    def predict_all(self) -> None:
        """Score every image with the current model on a pool thread (never the GUI thread).

        Predictions are saved batch by batch (``gui.predict_batch`` images, one transaction
        each), so Cancel, a crash or closing the window loses at most the batch in flight.
        """
        if self.project is None:
            return
        if self.prediction_running():
            self.statusBar().showMessage("prediction already running", 3000)
            return
        version = queries.current_model(self.project)
        if version is None:
            self.show_error("no trained model yet: Model → Train first")
            return
        from defectssft.predict import predict_images

        try:
            batch = max(1, int(self.project.get_setting(PREDICT_BATCH_SETTING, 32) or 32))
        except (TypeError, ValueError):
            batch = 32
        stop = threading.Event()
        project = self.project
        task = Task(
            predict_images,
            project,
            version,
            only_unlabeled=False,
            batch_size=batch,
            should_stop=stop.is_set,
            with_progress=True,
        )
        self._tasks.add(task)
        self._predict_all = (task, stop)
        task.signals.progress.connect(self._predict_progress)
        start_task(
            self.pool,
            task,
            lambda summary: self._predict_all_finished(task, project, summary, ""),
            lambda msg: self._predict_all_finished(task, project, None, msg),
        )
        self._sync_predict_ui()
        self.statusBar().showMessage(
            f"predicting all images with {version}… ({self._keys('cancel_predict')} cancels)"
        )

    def _predict_progress(self, done: int, total: int) -> None:
        self.predict_bar.setRange(0, max(total, 1))
        self.predict_bar.setValue(done)
        self.statusBar().showMessage(
            f"predicting {done}/{total} images… ({self._keys('cancel_predict')} cancels)"
        )

    def _predict_all_finished(
        self, task: Task, project: Project, summary: dict[str, Any] | None, error: str
    ) -> None:
        self._tasks.discard(task)
        if self._predict_all is not None and self._predict_all[0] is task:
            self._predict_all = None
        self._sync_predict_ui()
        if project is not self.project:  # the window moved on to another project
            return
        if summary is None:
            self.show_error(f"predict all: {error}")
            self._after_rows_note = f"error: predict all: {error}"
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
            self.statusBar().showMessage(note, 15000)
            self._after_rows_note = note
            result = dict(summary)
        self.refresh()  # suggestions, filters and sort by score use the new predictions
        self.predictAllDone.emit(result)

    def cancel_predict(self) -> None:
        """Stop the running prediction after its current batch; saved batches stay."""
        if self._predict_all is not None:
            self._predict_all[1].set()
            self.statusBar().showMessage("cancelling after the current batch…")
        if self.predict_proc.running():
            self.predict_proc.terminate()  # the child stops after its batch too (SIGTERM)

    def _sync_predict_ui(self) -> None:
        """Progress bar, Cancel button and action enabled only while a prediction runs."""
        running = self.prediction_running()
        if running and self.predict_bar.isHidden():
            self.predict_bar.setRange(0, 0)  # busy until the first batch reports
        self.predict_bar.setVisible(running)
        self.predict_cancel_button.setVisible(running)
        self.actions_by_name["cancel_predict"].setEnabled(running)

    def open_training(self) -> None:
        from defectssft_gui.train_dialog import TrainDialog

        if self.project is None:
            return
        dlg = getattr(self, "train_dialog", None)
        if dlg is None:
            dlg = TrainDialog(self.project.root, self)
            dlg.modelTrained.connect(lambda _v: (self.reload_classes(), self.refresh()))
            self.train_dialog = dlg
        dlg.show()
        dlg.raise_()

    def open_label_book(self) -> None:
        from defectssft_gui.dialogs import LabelBookDialog

        if self.project is None:
            return
        dlg = LabelBookDialog(self.project, self)
        dlg.classRenamed.connect(self._class_renamed)
        dlg.classesChanged.connect(self._classes_changed)
        self.label_book = dlg
        dlg.show()

    def open_settings(self) -> None:
        from defectssft_gui.dialogs import SettingsDialog

        if self.project is None:
            return
        dlg = SettingsDialog(self.project, self)
        dlg.saved.connect(self._settings_saved)
        self.settings_dialog = dlg
        dlg.show()

    def _classes_changed(self) -> None:
        self.reload_classes()
        self.refresh()

    def _class_renamed(self, old: str, new: str) -> None:
        """Keep the shown filter and the undo stack on a renamed class (labels follow by id)."""
        for i in range(self.filter_box.count()):
            kind, _, name = str(self.filter_box.itemData(i)).partition(":")
            if kind in ("class", "pred") and name == old:
                self.filter_box.setItemData(i, f"{kind}:{new}")
        if self.session is not None:
            self.session.rename_class(old, new)
        self.statusBar().showMessage(f"class {old} is now {new}", 5000)

    def _settings_saved(self) -> None:
        assert self.project is not None
        if self.session is not None:
            self.session.who = str(self.project.get_setting(WHO_SETTING, "operator"))
        self.apply_shortcuts()
        self.refresh()

    # ================================================================== errors / close
    def show_error(self, message: str) -> None:
        """One line for the user; never a traceback. Non-modal so nothing waits on it."""
        self.last_error = message
        self.statusBar().showMessage(f"error: {message}", 10000)
        self.errorShown.emit(message)
        if not self.quiet:
            box = QMessageBox(
                QMessageBox.Icon.Warning, "defectssft", message, QMessageBox.StandardButton.Ok, self
            )
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.project is not None:
            self.project.set_setting("gui.levels", [self.viewer.low, self.viewer.high])
        dlg = getattr(self, "train_dialog", None)
        if dlg is not None:
            dlg.shutdown()
        self.predict_proc.terminate()
        if self._predict_all is not None:
            self._predict_all[1].set()  # the pool thread stops after its current batch
        self.stop_watch()
        self.pool.waitForDone(10000)
        self.query_pool.waitForDone(10000)
        self.viewer.cache.close()
        if self.loader is not None:
            self.loader.close()
        super().closeEvent(event)
