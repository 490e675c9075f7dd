"""The evaluation report's pictures: a mistake gallery a person can see, readable plots."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defectssft import report as R


def test_gallery_shows_thin_strips_and_small_images_at_a_visible_size(tmp_path: Path):
    strip = tmp_path / "strip.png"
    cv2.imwrite(str(strip), np.zeros((1240, 500), np.uint8))  # KolektorSDD-like, tall
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((48, 48), np.uint8))
    items = [
        R.Item(1, strip, "defect", "ok", 0.9, 0.1, "kos01.png"),
        R.Item(2, small, "ok", "defect", 0.8, 0.9, "s.png"),
        R.Item(3, small, "ok", "ok", 0.99, 0.01, "right.png"),  # not a mistake
    ]
    out = R.write_gallery(items, tmp_path / "gallery")
    assert [i.image_id for i, _ in out] == [1, 2]
    sizes = {i.image_id: cv2.imread(str(tmp_path / rel)).shape[:2] for i, rel in out}
    h, w = sizes[1]
    assert min(h, w) >= R.THUMB_MIN_PX - 1 and max(h, w) <= R.THUMB_MAX_PX
    assert h > w  # the strip keeps its shape
    assert min(sizes[2]) >= R.THUMB_MIN_PX - 1


def test_two_class_confusion_plot_is_not_tiny(tmp_path: Path):
    path = R.plot_confusion(np.array([[5, 1], [0, 4]]), ["ok", "defect"], tmp_path / "c.png")
    h, w = cv2.imread(str(path)).shape[:2]
    assert w >= 450 and h >= 400


def test_score_histogram_counts_images_in_whole_numbers(tmp_path: Path, monkeypatch):
    import matplotlib.figure

    ticks: list[list[float]] = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        ticks.append(list(fig.axes[0].get_yticks()))
        return save(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    R.plot_scores(scores, np.array([False, False, True, True]), 0.5, tmp_path / "s.png")
    assert ticks and all(float(t).is_integer() for t in ticks[0])
