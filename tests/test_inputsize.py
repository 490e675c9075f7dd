from __future__ import annotations

import pytest

from defectssft.inputsize import image_sizes, propose_input_size, shrink_note


def test_square_images_keep_the_preset_side():
    assert propose_input_size([(48, 48)] * 5, 96) == (96, 96)
    assert propose_input_size([], 224) == (224, 224)


def test_tall_strips_get_a_tall_input_of_about_the_same_area():
    h, w = propose_input_size([(500, 1240), (500, 1250), (510, 1240)], 224)
    assert (h, w) == (352, 128)  # 224 / sqrt(0.403) = 353, 224 * sqrt(0.403) = 142: to 32s
    assert h % 32 == 0 and w % 32 == 0
    assert 0.8 < (h * w) / 224**2 < 1.2


def test_median_not_mean_and_small_sides_stay_positive():
    assert propose_input_size([(100, 100), (100, 100), (1000, 10)], 64) == (64, 64)
    assert min(propose_input_size([(10000, 1)], 32)) >= 32


def test_shrink_note_says_what_the_resize_erases_only_when_it_shrinks_3x():
    kolektor = [(500, 1240), (500, 1250), (510, 1260)]
    note = shrink_note(kolektor, 192, 96)  # 1250 / 192 = 6.5, 500 / 96 = 5.2: the smaller
    assert note is not None and note.startswith("the resize shrinks the parts 5.2x or more")
    assert "thinner than about 5 px" in note
    assert "input.side" in note and "--preset tiles" in note  # both levers, the cheaper first
    assert shrink_note(kolektor, 512, 192) is None  # 2.4x
    assert shrink_note([(300, 300)], 96, 96) is not None  # 3.1x
    assert shrink_note([(256, 256)], 128, 128) is None
    assert shrink_note([], 128, 128) is None


@pytest.mark.parametrize("side", [0, -5])
def test_bad_side_is_refused(side):
    with pytest.raises(ValueError):
        propose_input_size([(10, 10)], side)


def test_image_sizes_of_a_project(tmp_path):
    import cv2
    import numpy as np

    from defectssft.project import Project

    p = Project.create(tmp_path / "p", classes=["ok", "ng"], ok_class="ok")
    f = tmp_path / "a.png"
    cv2.imwrite(str(f), np.zeros((30, 70), np.uint8))
    p.add_image(f)
    assert image_sizes(p) == [(70, 30)]
