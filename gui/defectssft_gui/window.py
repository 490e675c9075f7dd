"""The main window: browse, view and label the images of one project.

Built in ``_setup_widgets / _setup_actions / _setup_menus`` (as labelme's app); all project work
goes through the core (``Project``, ``import_paths``, ``HotFolder``); anything slow runs on a pool
thread or in a child process (``workers``). Every label is committed the moment it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from defectssft import queries
from defectssft.classes import ClassInfo
from defectssft.errors import DefectssftError
from defectssft.labeling import LabelSession
from defectssft.project import Project
from defectssft.queries import Row
from defectssft.verdicts import VERDICT_FILTERS, VerdictCache, shown_version, verdict_rows
from defectssft_gui import project_flows
from defectssft_gui.actions import ACTIONS, new_action, shortcuts_for
from defectssft_gui.anomaly_view import NOVEL_FILTER, AnomalyMapController
from defectssft_gui.gallery import ImageListModel
from defectssft_gui.import_controller import ImportController
from defectssft_gui.predict_controller import PredictController
from defectssft_gui.thumbs import ThumbnailLoader, thumb_dir
from defectssft_gui.viewer import ImageViewer
from defectssft_gui.widgets import BrowsePanel, ClassButton, FlowLayout, LevelsBar, VerdictStrip
from defectssft_gui.workers import Task, start_task

EXAMPLES_SETTING = "labelbook.examples"
WHO_SETTING = "gui.who"
PREFETCH_AHEAD = 3


def _load_rows(
    project: Project, spec: str, sort: str
) -> tuple[str | None, list[Row], dict[str, Any], VerdictCache]:
    """Runs on the query thread: the model shown, the grid rows, the project counts and the
    shown model's verdicts (which read the shipped file's metadata: not on the GUI thread)."""
    version = shown_version(project)
    if spec.startswith("verdict:"):
        rows = verdict_rows(project, spec, sort, version)
    else:
        rows = queries.fetch_rows(project, spec, sort, version)
    return version, rows, project.status(), VerdictCache(project, version)


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
        self._tasks: set[Task] = set()
        self._closing = False  # set by closeEvent: late task results are dropped
        self.session: LabelSession | None = None
        self.loader: ThumbnailLoader | None = None
        self.model: ImageListModel | None = None
        self._after_rows_note = ""  # shown once the next refresh has replaced the status line
        self.model_version: str | None = None
        self.class_actions: list[QAction] = []
        self.actions_by_name: dict[str, QAction] = {}
        self._refresh_timer = QTimer(self, singleShot=True, interval=800)
        self._refresh_timer.timeout.connect(self.refresh)
        self._thumbs_timer = QTimer(self, singleShot=True, interval=150)
        self._thumbs_timer.timeout.connect(self._thumbs_follow_levels)
        self._counts_timer = QTimer(self, singleShot=True, interval=300)
        self._counts_timer.timeout.connect(self._refresh_counts)
        self.verdicts: VerdictCache | None = None
        self.colours: dict[str, str] = {}
        self.setWindowTitle("defectssft")
        self.resize(1280, 800)
        self.importer = ImportController(self)
        self.predictor = PredictController(self)
        self._setup_widgets()
        self._setup_actions()
        self._setup_menus()
        self.anomaly = AnomalyMapController(self)  # View → Anomaly map (anomaly_view.py)
        if project is not None:
            self.open_project(project)
        else:
            self.statusBar().showMessage(
                "No project open: File → New project… (Ctrl+N) or Open project… (Ctrl+O)"
            )
        self._update_enabled()

    # ================================================================== setup
    def _setup_widgets(self) -> None:
        self.browse = left = BrowsePanel()
        self.filter_box, self.sort_box = left.filter_box, left.sort_box
        self.count_label, self.grid = left.count_label, left.grid
        self.filter_box.currentIndexChanged.connect(lambda _i: self.refresh())
        self.sort_box.currentIndexChanged.connect(lambda _i: self.refresh())

        self.viewer = ImageViewer()
        self.strip = VerdictStrip()
        self.info_label = QLabel("No project open. File → Open project…")
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info_label.setWordWrap(True)
        self.pred_label = QLabel("")
        self.pred_label.setObjectName("prediction")
        self.pred_label.setWordWrap(True)  # a long verdict line wraps; it never widens the pane
        self.levels = LevelsBar()
        self.level_slider, self.window_slider = self.levels.level_slider, self.levels.window_slider
        self.level_slider.valueChanged.connect(self._levels_changed)
        self.window_slider.valueChanged.connect(self._levels_changed)

        self.class_bar_widget = QWidget()
        self.class_bar = FlowLayout(self.class_bar_widget)  # wraps: 9 classes fit 1280 px
        self.class_buttons: dict[str, ClassButton] = {}
        self.accept_button = QPushButton("Accept suggestion")
        self.accept_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.accept_button.clicked.connect(self.accept_suggestion)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(4, 4, 4, 4)
        rv.addWidget(self.viewer, 1)
        rv.addWidget(self.strip)
        rv.addWidget(self.info_label)
        rv.addWidget(self.pred_label)
        rv.addWidget(self.levels)
        bar = QHBoxLayout()
        bar.addWidget(self.class_bar_widget, 1)
        bar.addWidget(self.accept_button, 0, Qt.AlignmentFlag.AlignTop)
        rv.addLayout(bar)

        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([560, 720])
        self.setCentralWidget(split)
        self.counts_label = QLabel("")
        self.statusBar().addPermanentWidget(self.counts_label)

    def _setup_actions(self) -> None:
        slots = {
            "new_project": lambda: project_flows.new_project(self),
            "open": self.importer.choose_project,
            "imports": lambda: project_flows.open_imports(self),
            "import_files": self.importer.choose_import_files,
            "import_folder": self.importer.choose_import_folder,
            "watch": self.importer.toggle_watch,
            "quit": self.close,
            "close": self.close,
            "history": self.open_history,
            "models": self.open_models,
            "operating_point": lambda: self.open_operating_point(),
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
            "predict": self.predictor.run_predict,
            "predict_all": self.predictor.predict_all,
            "cancel_predict": self.predictor.cancel_predict,
            "train": self.open_training,
            "label_book": self.open_label_book,
            "roi": self.open_roi,
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
            "&File": [
                "new_project",
                "open",
                "import_files",
                "import_folder",
                "imports",
                "watch",
                None,
                "close",
                "quit",
            ],
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
                "history",
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
            "&Model": [
                "predict",
                "predict_all",
                "cancel_predict",
                None,
                "roi",
                "train",
                "models",
                "operating_point",
            ],
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
        self.loader.set_display(depth, self.viewer.low, self.viewer.high)
        self.setWindowTitle(f"defectssft — {project.name} ({project.root})")
        self.reload_classes()
        self.apply_shortcuts()
        self.refresh()
        self._update_enabled()
        self.grid.setFocus()  # class hotkeys label at once (not typed into a combo box)
        return True

    def close_project(self) -> None:
        self.stop_watch()
        self.predictor.stop()
        for name in ("models_dialog", "history_dialog"):  # they belong to the project closed
            dlg = getattr(self, name, None)
            if dlg is not None:
                if name == "models_dialog":
                    dlg.pool.waitForDone(60000)  # a promotion in flight finishes first
                dlg.close()
                setattr(self, name, None)
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
        self.model_version = shown_version(self.project)
        self.colours = {c.name: c.colour or "#dddddd" for c in classes}
        self._name_sort_box()
        if self.model is not None:
            self.model.colours = self.colours
        for action in self.class_actions:
            self.removeAction(action)
            action.deleteLater()
        self.class_actions = []
        self.class_menu.clear()
        self.class_buttons = {}
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
            NOVEL_FILTER,
        ]
        entries += [(f"labeled {c.name}", f"class:{c.name}") for c in classes]
        entries += [(f"predicted {c.name}", f"pred:{c.name}") for c in classes]
        entries += [
            ("uncertain", "uncertain"),
            ("misclassified", "misclassified"),
        ]
        entries += [
            (text, key)
            for key, text in VERDICT_FILTERS.items()
            if key == "verdict:unsure" or self.project.ok_class is not None
        ]
        entries += [("quarantined", "quarantined")]
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
        button = ClassButton(text, c.colour)
        button.setToolTip(c.description or f"Label as {c.name}")
        button.clicked.connect(action.trigger)
        self.class_bar.addWidget(button)
        self.class_buttons[c.name] = button

    def _name_sort_box(self) -> None:
        """Without an OK class the "defect score" is 1 - confidence: call it what it is."""
        ok = self.project is not None and self.project.ok_class is not None
        names = (
            ("defect score ↓", "defect score ↑")
            if ok
            else ("least confident first", "most confident first")
        )
        for key, text in zip(("score", "-score"), names, strict=True):
            self.sort_box.setItemText(self.sort_box.findData(key), text)

    def _update_enabled(self) -> None:
        has = self.project is not None
        for name, action in self.actions_by_name.items():
            if name not in ("new_project", "open", "quit", "close", "settings"):
                action.setEnabled(has)
        self.actions_by_name["settings"].setEnabled(has)
        for w in (self.accept_button, self.level_slider, self.window_slider, self.class_bar_widget):
            w.setEnabled(has)
        self.predictor._sync_predict_ui()

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

        def done(result: tuple[str | None, list[Row], dict[str, Any], VerdictCache]) -> None:
            self._tasks.discard(task)
            if gen == self._query_gen and self.model is not None:
                self._show_rows(*result, top=top)

        def failed(msg: str) -> None:
            self._tasks.discard(task)
            if gen == self._query_gen:
                self.show_error(msg)

        start_task(self.query_pool, task, done, failed)

    def _show_rows(
        self,
        version: str | None,
        rows: list[Row],
        status: dict[str, Any],
        verdicts: VerdictCache,
        top: bool,
    ) -> None:
        assert self.model is not None
        keep = None if top else self.current_row()
        self.model_version = version
        assert self.project is not None
        self.verdicts = verdicts
        self.model.verdicts = self.verdicts
        self.model.ok_known = self.project.ok_class is not None
        self.model.set_rows(rows)
        self.count_label.setText(f"{len(rows)} images")
        target = self.model.row_of(keep.image_id) if keep and keep.image_id is not None else None
        self.go_to(target if target is not None else 0)
        self._show_counts(status)
        if self._after_rows_note:
            self.statusBar().showMessage(self._after_rows_note, 15000)
            self._after_rows_note = ""
        self.rowsLoaded.emit(len(rows))

    def _show_counts(self, status: dict[str, Any]) -> None:
        """The project's counts, in the status bar for good (they follow every label)."""
        model = self.model_version or "no model yet"
        self.counts_label.setText(
            f"{status['images']} images, {status['labeled']} labeled, {status['unlabeled']} "
            f"unlabeled, {status['quarantined']} quarantined — model: {model}"
        )

    def _refresh_counts(self) -> None:
        """Re-read the counts on the query thread (after labels were written)."""
        if self.project is None:
            return
        task = Task(self.project.status)
        self._tasks.add(task)

        def done(status: dict[str, Any]) -> None:
            self._tasks.discard(task)
            if self.project is not None and not self._closing:  # delivered after close: drop
                self._show_counts(status)

        start_task(self.query_pool, task, done, lambda _m: self._tasks.discard(task))

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
            self.strip.clear()
            self._mark_current_class(None)
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
        self.anomaly.on_image_shown()

    def _show_info(self, r: Row) -> None:
        hist = getattr(self, "history_dialog", None)
        if hist is not None and hist.isVisible() and r.image_id is not None:
            hist.show_image(r.image_id)
        if r.reason is not None:
            self.info_label.setText(f"{r.path}\nquarantined: {r.reason}")
            self.pred_label.setText("")
            self.strip.clear()
            self._mark_current_class(None)
            return
        self.info_label.setText(
            f"#{r.image_id}  {r.name}  captured {r.capture}\nlabel: {r.label or '(none)'}"
        )
        verdict = self.verdicts.get(r.image_id) if self.verdicts is not None else None
        novel = self.verdicts.novel(r.image_id) if self.verdicts is not None else None
        self.strip.show_image(
            r.label,
            self.colours.get(r.label or ""),
            r.pred,
            self.colours.get(r.pred or ""),
            r.confidence,
            verdict,
        )
        self._mark_current_class(r.label)
        if r.pred is not None and r.confidence is not None:
            ok = self.project is not None and self.project.ok_class is not None
            score = "defect score" if ok else "least-confident score (1 − confidence)"
            why = ""  # what made the line's verdict UNSURE, beside the score that shows it
            band = self.verdicts.thresholds if self.verdicts is not None else None
            if novel:
                why = " (novel: anomaly score at or above the threshold)"
            elif verdict == "UNSURE" and band is not None:
                why = f" (in the UNSURE band {band.unsure_low:.4g} to {band.unsure_high:.4g})"
            # .4g as the operating-point panel draws thresholds: a band at 1e-6 is not "0.000"
            self.pred_label.setText(
                f"model {self.model_version}: {r.pred} ({r.confidence:.1%}), {score} "
                f"{(r.score or 0):.4g}, line verdict {verdict or '—'}{why} — press "
                f"{self._keys('accept')} to accept"
            )
        else:
            self.pred_label.setText("no prediction (Model → Predict unlabeled / all images)")

    def _mark_current_class(self, label: str | None) -> None:
        for name, button in self.class_buttons.items():
            button.set_current(name == label)

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
        self._counts_timer.start()
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
        self._counts_timer.start()
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
        self._thumbs_timer.start()

    def _thumbs_follow_levels(self) -> None:
        """Thumbnails take the viewer's window/level (after the slider rests a moment)."""
        if self.loader is None or self.model is None:
            return
        if self.loader.set_display(self.viewer.bit_depth, self.viewer.low, self.viewer.high):
            self.model.redisplay()

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
        self._thumbs_timer.start()

    def toggle_heatmap(self) -> None:
        if self.actions_by_name["heatmap"].isChecked():
            self.compute_heatmap()
        else:
            self.viewer.clear_heatmap()

    # ================================================================== import / watch, model
    # (the work is in ImportController and PredictController; these are the window's API)
    @property
    def hot(self) -> Any:
        return self.importer.hot

    @property
    def predict_bar(self) -> QProgressBar:
        return self.predictor.predict_bar

    @property
    def predict_cancel_button(self) -> QPushButton:
        return self.predictor.predict_cancel_button

    def import_paths(self, paths: list[str], label_from: str | None = None) -> None:
        self.importer.import_paths(paths, label_from=label_from)

    def start_watch(self, folder: str | Path) -> bool:
        return self.importer.start_watch(folder)

    def stop_watch(self) -> None:
        self.importer.stop_watch()

    def prediction_running(self) -> bool:
        return self.predictor.prediction_running()

    def run_predict(self) -> None:
        self.predictor.run_predict()

    def predict_all(self) -> None:
        self.predictor.predict_all()

    def cancel_predict(self) -> None:
        self.predictor.cancel_predict()

    def compute_heatmap(self) -> None:
        self.predictor.compute_heatmap()

    # ================================================================== model
    def open_training(self) -> None:
        from defectssft_gui.train_dialog import TrainDialog

        if self.project is None:
            return
        dlg = getattr(self, "train_dialog", None)
        if dlg is None:
            dlg = TrainDialog(self.project.root, self)
            dlg.modelTrained.connect(self._model_trained)
            dlg.evaluationFinished.connect(lambda _code: self._reload_models_panel())
            self.train_dialog = dlg
        dlg.show()
        dlg.raise_()

    def _model_trained(self, version: str) -> None:
        """A new version: the old suggestions stay shown (``shown_version``) while the new model
        predicts the unlabeled images (Cancel / Esc stops it; what is saved stays)."""
        self.reload_classes()
        self.refresh()
        self._reload_models_panel()
        if self.project is None:
            return
        if queries.current_model(self.project) == version and not self.prediction_running():
            self.run_predict()
        else:
            prod = self.project.production_model()
            self._after_rows_note = (
                f"{version} trained; {prod} stays production (Model → Models… to compare and "
                "promote)"
            )

    def _reload_models_panel(self) -> None:
        dlg = getattr(self, "models_dialog", None)
        if dlg is not None and dlg.isVisible() and not dlg._tasks:
            dlg.reload()

    def open_history(self) -> None:
        """The label history of the current image; it follows the current image while open."""
        from defectssft_gui.history import LabelHistoryDialog

        cur = self.current_row()
        if self.project is None or cur is None or cur.image_id is None:
            return
        dlg = getattr(self, "history_dialog", None)
        if dlg is None or dlg.project is not self.project:
            dlg = LabelHistoryDialog(self.project, cur.image_id, self)
            self.history_dialog = dlg
        else:
            dlg.show_image(cur.image_id)
        dlg.show()
        dlg.raise_()

    def open_models(self) -> None:
        """The Models panel: versions, metrics, compare, promote / roll back, the report."""
        from defectssft_gui.models_panel import ModelsDialog

        if self.project is None:
            return
        dlg = getattr(self, "models_dialog", None)
        if dlg is None or dlg.project is not self.project:
            dlg = ModelsDialog(self.project, self)
            dlg.productionChanged.connect(lambda _v: (self.reload_classes(), self.refresh()))
            dlg.operatingPointRequested.connect(self.open_operating_point)
            self.models_dialog = dlg
        else:
            dlg.reload()
        dlg.show()
        dlg.raise_()

    def open_operating_point(self, version: str | None = None) -> None:
        """The operating-point panel of ``version`` (default: the model the grid shows)."""
        from defectssft_gui.operating_panel import OperatingPointDialog

        if self.project is None:
            return
        version = version or self.model_version or queries.current_model(self.project)
        if version is None:
            self.show_error("no trained model yet: train one first (Model → Train and export…)")
            return
        dlg = getattr(self, "operating_dialog", None)
        if dlg is not None and dlg.project is self.project and dlg.version == version:
            dlg.reload()
        else:
            if dlg is not None:
                dlg.close()
            try:
                dlg = OperatingPointDialog(self.project, version, self)
            except DefectssftError as e:
                self.show_error(str(e))
                return
            dlg.saved.connect(self._operating_point_saved)
            self.operating_dialog = dlg
        dlg.show()
        dlg.raise_()

    def _operating_point_saved(self, _version: str) -> None:
        """A new operating point: verdicts, verdict filters and the Models panel follow now
        (the refresh makes a new VerdictCache with the saved thresholds)."""
        self.refresh()
        self._reload_models_panel()

    def open_label_book(self) -> None:
        from defectssft_gui.dialogs import LabelBookDialog

        if self.project is None:
            return
        dlg = LabelBookDialog(self.project, self)
        dlg.classRenamed.connect(self._class_renamed)
        dlg.classesChanged.connect(self._classes_changed)
        self.label_book = dlg
        dlg.show()

    def open_roi(self) -> None:
        """The region-of-interest dialog on the current image (defectssft_gui.roi_dialog)."""
        from defectssft_gui.roi_dialog import RoiDialog

        if self.project is None:
            return
        row = self.current_row()
        path = row.path if row is not None and row.image_id is not None else None
        self.roi_dialog = RoiDialog(self.project, path, self)
        self.roi_dialog.show()

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
        self.viewer.bit_depth = int(self.project.get_setting("input.bit_depth", 16) or 16)
        self.viewer.set_window(self.viewer.low, self.viewer.high)  # re-render at the new depth
        self._thumbs_follow_levels()
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
        self._closing = True
        if self.project is not None:
            self.project.set_setting("gui.levels", [self.viewer.low, self.viewer.high])
        dlg = getattr(self, "train_dialog", None)
        if dlg is not None:
            dlg.shutdown()
        self.predictor.predict_proc.terminate()
        self.predictor.stop()  # the pool thread stops after its current batch
        self.stop_watch()
        models = getattr(self, "models_dialog", None)
        if models is not None:
            models.pool.waitForDone(60000)  # a promotion in flight finishes (all or nothing)
        operating = getattr(self, "operating_dialog", None)
        if operating is not None:
            operating.pool.waitForDone(60000)  # an export in flight finishes (atomic file)
        self.pool.waitForDone(10000)
        self.query_pool.waitForDone(10000)
        self.viewer.cache.close()
        if self.loader is not None:
            self.loader.close()
        super().closeEvent(event)
