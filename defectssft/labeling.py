"""Labeling with undo/redo, the one undo of label changes: every change is written at once.

``LabelSession.apply`` / ``apply_each`` call ``Project.set_labels_each`` (one committed
transaction), so a crash right after a key press loses nothing. A bulk change (many images at
once, even with different labels) is one undo step, and its undo and redo are one transaction
each. Undo and redo are themselves label changes in the project's append-only history (one event
per image), so the audit trail shows them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from defectssft.project import Project


@dataclass(frozen=True)
class LabelChange:
    """One undo step: ``before`` and ``after`` hold each changed image's label, in order."""

    before: tuple[tuple[int, str | None], ...]
    after: tuple[tuple[int, str | None], ...]

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
        changed. Raises ProjectError for an unknown class or image (nothing is written)."""
        return self.apply_each({int(i): label for i in image_ids})

    def apply_each(self, labels: Mapping[int, str | None]) -> LabelChange | None:
        """Give each image its own label in one transaction and one undo step; returns the
        change, None if nothing changed. Raises ProjectError (nothing written) for an unknown
        class or image."""
        wanted = {int(i): lab for i, lab in labels.items()}
        if not wanted:
            return None
        before = self._labels(list(wanted))
        changed = [(i, before[i]) for i in wanted if before[i] != wanted[i]]
        if not changed:
            return None
        after = tuple((i, wanted[i]) for i, _ in changed)
        self._write(dict(after))
        change = LabelChange(tuple(changed), after)
        self._undo.append(change)
        del self._undo[: -self.depth]
        self._redo.clear()
        return change

    def undo(self) -> LabelChange | None:
        """Put back the labels of the last change (one transaction); returns it (None when
        there is nothing)."""
        if not self._undo:
            return None
        change = self._undo[-1]
        self._write(dict(change.before))
        self._undo.pop()
        self._redo.append(change)
        return change

    def redo(self) -> LabelChange | None:
        """Re-apply the last undone change (one transaction); returns it (None when none)."""
        if not self._redo:
            return None
        change = self._redo[-1]
        self._write(dict(change.after))
        self._redo.pop()
        self._undo.append(change)
        return change

    def _write(self, labels: dict[int, str | None]) -> None:
        self.project.set_labels_each(labels, who=self.who, source="human")

    def rename_class(self, old: str, new: str) -> None:
        """Follow a class rename in the undo/redo stacks (they hold class names)."""

        def fix(label: str | None) -> str | None:
            return new if label == old else label

        for stack in (self._undo, self._redo):
            stack[:] = [
                LabelChange(
                    tuple((i, fix(lab)) for i, lab in c.before),
                    tuple((i, fix(lab)) for i, lab in c.after),
                )
                for c in stack
            ]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _labels(self, ids: list[int]) -> dict[int, str | None]:
        return self.project.labels_of(ids)
