"""Labeling with undo/redo (no Qt): every change is written to the project at once.

``LabelSession.apply`` calls ``Project.set_labels`` (one committed transaction), so a crash right
after a key press loses nothing. Undo and redo are themselves label changes in the project's
append-only history, so the audit trail shows them too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from defectssft.project import Project


@dataclass(frozen=True)
class LabelChange:
    """Images given ``after``; ``before`` holds each image's label just before."""

    before: tuple[tuple[int, str | None], ...]
    after: str | None

    @property
    def image_ids(self) -> list[int]:
        return [i for i, _ in self.before]


class LabelSession:
    """Label images in ``project`` as ``who``, with an undo/redo stack of at most ``depth``."""

    def __init__(self, project: Project, who: str = "operator", depth: int = 500) -> None:
        self.project = project
        self.who = who
        self.depth = depth
        self._undo: list[LabelChange] = []
        self._redo: list[LabelChange] = []

    def apply(self, image_ids: list[int], label: str | None) -> LabelChange | None:
        """Give ``label`` (None clears) to ``image_ids``; returns the change, None if nothing
        changed. Raises ProjectError for an unknown class or image."""
        ids = list(dict.fromkeys(int(i) for i in image_ids))
        if not ids:
            return None
        before = self._labels(ids)
        changed = [(i, before[i]) for i in ids if before[i] != label]
        if not changed:
            return None
        self.project.set_labels([i for i, _ in changed], label, who=self.who, source="human")
        change = LabelChange(tuple(changed), label)
        self._undo.append(change)
        del self._undo[:-self.depth]
        self._redo.clear()
        return change

    def undo(self) -> LabelChange | None:
        """Put back the labels of the last change; returns it (None when there is nothing)."""
        if not self._undo:
            return None
        change = self._undo.pop()
        groups: dict[str | None, list[int]] = defaultdict(list)
        for image_id, label in change.before:
            groups[label].append(image_id)
        with_labels = list(groups.items())
        for label, ids in with_labels:
            self.project.set_labels(ids, label, who=self.who, source="human")
        self._redo.append(change)
        return change

    def redo(self) -> LabelChange | None:
        if not self._redo:
            return None
        change = self._redo.pop()
        self.project.set_labels(change.image_ids, change.after, who=self.who, source="human")
        self._undo.append(change)
        return change

    def rename_class(self, old: str, new: str) -> None:
        """Follow a class rename in the undo/redo stacks (they hold class names)."""

        def fix(label: str | None) -> str | None:
            return new if label == old else label

        for stack in (self._undo, self._redo):
            stack[:] = [LabelChange(tuple((i, fix(lab)) for i, lab in c.before), fix(c.after))
                        for c in stack]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _labels(self, ids: list[int]) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        con = self.project._con()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = con.execute(
                "SELECT i.id, c.name FROM images i LEFT JOIN classes c ON c.id = i.label_class_id "
                f"WHERE i.id IN ({','.join('?' * len(chunk))})", chunk)
            out.update({r[0]: r[1] for r in rows})
        missing = [i for i in ids if i not in out]
        if missing:
            self.project.get_image(missing[0])  # raises ProjectError naming the image
        return out
