"""Where a new project may go, and creating one with hotkeys and bit depth (the app's wizard).

``check_project_folder`` says what a folder is before a project is made there: missing or empty
(fine), already a project (open it), holding images (make the project beside it and import them)
or holding other files (refused: a project never mixes with unrelated files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from defectssft.errors import ProjectError
from defectssft.project import DB_NAME, Project
from defectssft_line.preprocess import is_image_name

# Look at no more than this many entries when classifying a folder (a share can be huge).
_SCAN_LIMIT = 20_000


@dataclass(frozen=True)
class FolderCheck:
    path: Path
    kind: str  # "new" (missing or empty) | "project" | "images" | "other" | "file"
    images: int = 0  # image files found (recursively, up to the scan limit)
    others: int = 0  # other entries

    @property
    def can_create(self) -> bool:
        return self.kind == "new"

    @property
    def beside(self) -> Path:
        """A free folder next to this one for a project that imports its images."""
        base = self.path.parent / f"{self.path.name}-project"
        candidate, n = base, 2
        while candidate.exists() and any(candidate.iterdir()):
            candidate = self.path.parent / f"{base.name}-{n}"
            n += 1
        return candidate

    def message(self) -> str:
        """One line for the person choosing the folder."""
        if self.kind == "new":
            return f"{self.path}: a new project will be created here"
        if self.kind == "project":
            return f"{self.path}: already a project; open it instead"
        if self.kind == "file":
            return f"{self.path}: is a file, not a folder"
        if self.kind == "images":
            return (
                f"{self.path} holds {self.images} images and is not a project: create the project "
                f"in an empty folder (e.g. {self.beside}) and import these images into it"
            )
        return (
            f"{self.path} is not empty ({self.others} files or folders that are not a project): "
            "choose an empty or new folder for the project"
        )


def check_project_folder(path: str | Path) -> FolderCheck:
    """Classify ``path`` for "create a project here" (never writes)."""
    p = Path(path)
    if not p.exists():
        return FolderCheck(p, "new")
    if not p.is_dir():
        return FolderCheck(p, "file")
    if (p / DB_NAME).exists():
        return FolderCheck(p, "project")
    images = others = seen = 0
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if Path(dirpath) == p:
            others += len(dirnames)
        for name in filenames:
            if name.startswith("."):
                continue
            if is_image_name(name):
                images += 1
            elif Path(dirpath) == p:
                others += 1
        seen += len(filenames)
        if seen > _SCAN_LIMIT:
            break
    if images:
        return FolderCheck(p, "images", images, others)
    if others:
        return FolderCheck(p, "other", 0, others)
    return FolderCheck(p, "new")


def create_project(
    path: str | Path,
    classes: Sequence[tuple[str, str | None]] = (),
    ok_class: str | None = None,
    bit_depth: int | None = None,
) -> Project:
    """Create a project in a new or empty folder: ``classes`` are (name, hotkey or None).

    ProjectError (one line, nothing created) for a folder that is not new or empty, a bad or
    repeated class name or hotkey, an OK class not among the classes or a bit depth outside 8..16.
    """
    check = check_project_folder(path)
    if not check.can_create:
        raise ProjectError(check.message())
    if bit_depth is not None and not 8 <= int(bit_depth) <= 16:
        raise ProjectError(f"bit depth {bit_depth}: use 8 to 16 (the sensor's bits per pixel)")
    keys = [k.strip() for _, k in classes if k and k.strip()]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ProjectError(f"hotkey {twice!r} is given to two classes")
    names = [n for n, _ in classes]
    project = Project.create(path, classes=names, ok_class=ok_class)
    for name, key in classes:
        if key is not None:
            project.update_class(name.strip(), hotkey=key.strip() or None)
    if bit_depth is not None:
        project.set_setting("input.bit_depth", int(bit_depth))
    return project
