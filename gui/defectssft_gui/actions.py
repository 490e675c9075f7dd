"""Actions and shortcuts as data: one table of defaults, overridable per project, one helper.

Shortcuts live in ``DEFAULT_SHORTCUTS`` (action name -> key sequence, or a list of them); a
project may override any of them under the setting ``gui.shortcuts``. Actions every desktop app
has (open, close, quit, undo, redo, refresh, preferences) take the platform's keys
(``QKeySequence.StandardKey``, ``STANDARD_KEYS``) and the table's only where the platform has
none. Class hotkeys (1-9) are not here: they belong to the classes
(``Project.update_class(name, hotkey=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QWidget

from defectssft.project import Project

SHORTCUTS_SETTING = "gui.shortcuts"

# action name -> (menu text, default shortcut(s), tip)
ACTIONS: dict[str, tuple[str, str | list[str], str]] = {
    "new_project": (
        "&New project…",
        "Ctrl+N",
        "Create a project: folder, classes, bit depth, first import with a preview",
    ),
    "open": ("&Open project…", "Ctrl+O", "Open or create a project folder"),
    "import_files": ("Import &files…", "Ctrl+I", "Copy image files into the project"),
    "import_folder": (
        "Import f&older…",
        "Ctrl+Shift+I",
        "Copy a folder of images into the project",
    ),
    "imports": ("Import &history…", "", "Recorded imports; undo one (its images or its labels)"),
    "watch": (
        "&Watch hot folder…",
        "Ctrl+Shift+H",
        "Start or stop ingesting a folder cameras write to",
    ),
    "close": ("&Close window", "Ctrl+W", "Close the window"),
    "quit": ("&Quit", "Ctrl+Q", "Close the window"),
    "next": ("&Next image", ["D", "Right"], "Show the next image"),
    "prev": ("&Previous image", ["A", "Left"], "Show the previous image"),
    "accept": ("&Accept suggestion", "Space", "Label with the model's predicted class"),
    "clear_label": ("&Clear label", "Backspace", "Remove the label of the selection"),
    "undo": ("&Undo label", "Ctrl+Z", "Undo the last label change"),
    "redo": ("&Redo label", "Ctrl+Shift+Z", "Redo the last undone label change"),
    "next_useful": ("Next most &useful", "N", "Show unlabeled images, most useful first"),
    "example": ("Mark as label-book &example", "E", "Add the image to its class's examples"),
    "fit": ("&Fit to window", "F", "Fit the image to the view"),
    "one_to_one": ("&1:1", "Ctrl+1", "Show the image at its pixel size"),
    "zoom_in": ("Zoom &in", "+", "Zoom in"),
    "zoom_out": ("Zoom &out", "-", "Zoom out"),
    "heatmap": ("&Heat map", "H", "Overlay where the model looked (Grad-CAM)"),
    "reset_levels": ("&Reset brightness/contrast", "R", "Full range, no window/level"),
    "predict": ("&Predict unlabeled", "Ctrl+P", "Run the current model over unlabeled images"),
    "predict_all": (
        "Predict &all images",
        "Ctrl+Shift+P",
        "Run the current model over every image, saved batch by batch",
    ),
    "cancel_predict": (
        "&Cancel prediction",
        "Esc",
        "Stop the running prediction after its current batch (saved ones stay)",
    ),
    "train": ("&Train and export…", "Ctrl+T", "Train a model in a separate process"),
    "roi": (
        "Region of &interest…",
        "",
        "The part of the images the model inspects: rectangles drawn on the current image",
    ),
    "models": (
        "&Models…",
        "Ctrl+M",
        "Versions and their test metrics, compare, promote, roll back, the evaluation report",
    ),
    "operating_point": (
        "&Operating point…",
        "Ctrl+Shift+O",
        "NG threshold and UNSURE band of the current model: score histogram, escapes, overkill, "
        "review rate; save them, export with them",
    ),
    "history": (
        "Label &history…",
        "Ctrl+Shift+L",
        "Who labeled the current image, when, and what it was before",
    ),
    "label_book": ("&Label book…", "Ctrl+L", "Classes: names, descriptions, colours, hotkeys"),
    "settings": ("&Settings…", "Ctrl+,", "Shortcuts and preferences"),
    "refresh": ("Re&fresh", "F5", "Reload the image list"),
}
DEFAULT_SHORTCUTS: dict[str, str | list[str]] = {k: v[1] for k, v in ACTIONS.items()}
STANDARD_KEYS = {
    "open": QKeySequence.StandardKey.Open,
    "close": QKeySequence.StandardKey.Close,
    "quit": QKeySequence.StandardKey.Quit,
    "undo": QKeySequence.StandardKey.Undo,
    "redo": QKeySequence.StandardKey.Redo,
    "refresh": QKeySequence.StandardKey.Refresh,
    "settings": QKeySequence.StandardKey.Preferences,
}


def platform_keys(name: str) -> list[str]:
    """The platform's keys for a standard action (modifier chords and F-keys only, at most two);
    [] when the platform has none or no Qt application runs yet."""
    std = STANDARD_KEYS.get(name)
    if std is None or QGuiApplication.instance() is None:
        return []
    keys = [k.toString() for k in QKeySequence.keyBindings(std)]
    keys = [k for k in keys if "Ctrl+" in k or "Meta+" in k or k[:1] == "F" and k[1:].isdigit()]
    return keys[:2]


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value if v]


def shortcuts_for(project: Project | None) -> dict[str, list[str]]:
    """Effective shortcuts: defaults overridden by the project's ``gui.shortcuts`` setting."""
    merged: dict[str, Any] = dict(DEFAULT_SHORTCUTS)
    for name in STANDARD_KEYS:
        merged[name] = platform_keys(name) or merged[name]
    if project is not None:
        override = project.get_setting(SHORTCUTS_SETTING, {}) or {}
        if isinstance(override, dict):
            merged.update({k: v for k, v in override.items() if k in ACTIONS})
    return {k: as_list(v) for k, v in merged.items()}


def new_action(
    parent: QWidget,
    text: str,
    slot: Callable[..., Any] | None = None,
    shortcuts: list[str] | None = None,
    tip: str = "",
    checkable: bool = False,
    enabled: bool = True,
) -> QAction:
    """Make a QAction (labelme's ``new_action``): text, shortcuts, tip, slot, in one call."""
    action = QAction(text, parent)
    if shortcuts:
        action.setShortcuts([QKeySequence(s) for s in shortcuts])
    if tip:
        shown = f"{tip} ({', '.join(shortcuts)})" if shortcuts else tip
        action.setToolTip(shown)
        action.setStatusTip(tip)
    action.setCheckable(checkable)
    action.setEnabled(enabled)
    if slot is not None:
        action.triggered.connect(slot)
    return action
