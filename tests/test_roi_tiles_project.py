"""Region of interest and tiles on the training side: ``defectssft roi``, the ROI in training
data, multiple-instance tile selection, pooled validation, the ``tiles`` config section, and a
tiled model trained, evaluated, exported (parity with the line checked) and run on the line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from defectssft.cli import main
from defectssft.errors import ConfigError
from defectssft.project_roi import SETTING, project_roi, set_roi
from defectssft.training.config import resolve_config
from defectssft.training.data import DataError, ImageDataset
from defectssft.training.tiles import MilSelection, TileDataset, TiledVal, tile_spec
from defectssft_line.roi import Roi
from defectssft_line.tiles import TileSpec
from tests.helpers import TINY, make_project


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------- defectssft roi


def test_roi_cli_set_show_clear(tmp_path, capsys):
    project = make_project(tmp_path, per_class=2, unlabeled=0)  # 40 x 40 images
    root = str(project.root)
    rc, out, _ = run(["roi", root], capsys)
    assert rc == 0 and "no region of interest" in out
    rc, out, _ = run(["roi", root, "--rect", "2,4,30,20", "--rect", "10,30,5,5"], capsys)
    assert rc == 0 and "fits all 6 project image(s)" in out and "30x31" in out
    assert project_roi(project).rects == ((2, 4, 30, 20), (10, 30, 5, 5))
    rc, out, _ = run(["roi", root, "--json"], capsys)
    assert json.loads(out)["rects"] == [[2, 4, 30, 20], [10, 30, 5, 5]]
    rc, out, _ = run(["roi", root, "--clear"], capsys)
    assert rc == 0 and "cleared" in out and project_roi(project) is None


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--rect", "30,0,20,20"], "does not fit 6 of 6 project image(s), e.g. "),
        (["--rect", "1,2,3"], "x,y,w,h"),
        (["--rect", "0,0,0,10"], "w and h >= 1"),
        (["--clear", "--rect", "0,0,5,5"], "--clear cannot be combined"),
    ],
)
def test_roi_cli_bad_input_is_one_line_and_keeps_the_roi(tmp_path, capsys, args, msg):
    project = make_project(tmp_path, per_class=2, unlabeled=0)
    set_roi(project, ["1,1,10,10"])
    rc, out, err = run(["roi", str(project.root), *args], capsys)
    assert rc == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert project_roi(project).rects == ((1, 1, 10, 10),)  # nothing changed


def test_roi_mask_must_have_the_images_size(tmp_path, capsys):
    project = make_project(tmp_path, per_class=2, unlabeled=0)
    bad, good = tmp_path / "bad.png", tmp_path / "mask.png"
    cv2.imwrite(str(bad), np.full((30, 30), 255, np.uint8))
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 255
    cv2.imwrite(str(good), mask)
    rc, _, err = run(["roi", str(project.root), "--mask", str(bad)], capsys)
    assert rc == 2 and "the ROI mask is 30x30 but the image is 40x40" in err
    rc, _, err = run(["roi", str(project.root), "--mask", str(tmp_path / "none.png")], capsys)
    assert rc == 2 and "ROI mask" in err
    rc, out, _ = run(["roi", str(project.root), "--mask", str(good)], capsys)
    assert rc == 0 and "with a mask" in out
    assert project_roi(project).mask.shape == (40, 40)
    assert project.get_setting(SETTING)["rects"] == [[0, 0, 40, 40]]


# --------------------------------------------------------------------------- training data


def test_training_data_is_cropped_and_a_misfit_image_is_a_clear_error(tmp_path):
    img = np.zeros((40, 60), np.uint8)
    img[10:20, 30:50] = 200
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), img)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((20, 20), np.uint8))
    roi = Roi.from_rects(["30,10,20,10"]).to_meta()
    ds = ImageDataset([(str(good), 0), (str(small), 1)], 10, 20, 8, roi=roi)
    x, _ = ds[0]
    assert x.shape == (3, 10, 20) and int(x.min()) == 200  # only the bright box
    with pytest.raises(DataError, match=r"small\.png: region of interest 30,10,20,10"):
        ds[1]


def test_tiles_config_section_and_its_errors():
    cfg = resolve_config(sets=["tiles.enabled=true", "tiles.pool=topk", "input.height=64"])
    assert tile_spec(cfg) == TileSpec(64, 128, 1.0, 0.25, "topk", 3)
    assert tile_spec(resolve_config()) is None
    for bad, msg in (("tiles.pool=median", "tiles.pool"), ("tiles.overlap=1", "tiles.overlap")):
        with pytest.raises(ConfigError, match=msg):
            resolve_config(sets=[bad])
    quick = resolve_config(preset="tiles")
    assert tile_spec(quick) is not None


class BrightSpot(nn.Module):
    """Two classes: the 'defect' logit rises with the brightest pixel of the tile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # normalised NCHW (mean 0, std 1 here)
        m = x.amax(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), 20 * m - 10], dim=1)


def _parts(tmp_path: Path) -> tuple[str, str]:
    good = np.full((64, 96), 60, np.uint8)
    bad = good.copy()
    bad[50:53, 80:83] = 255
    pg, pb = tmp_path / "good.png", tmp_path / "bad.png"
    cv2.imwrite(str(pg), good)
    cv2.imwrite(str(pb), bad)
    return str(pg), str(pb)


def test_mil_gives_a_defective_part_its_top_scoring_tile(tmp_path):
    good, bad = _parts(tmp_path)
    spec = TileSpec(16, 16, overlap=0.0)
    ds = TileDataset([(good, 0), (bad, 1)], spec, 8, None, random_labels=(0,))
    mil = MilSelection(ds, every=5, batch=4)
    assert mil.due(0)
    # before a refresh the defective part's tile is random; after, it holds the defect
    mil.refresh(0, BrightSpot(), [0.0] * 3, [1.0] * 3, torch.device("cpu"))
    assert ds.selected[1, 0].tolist() == [48, 80]
    assert ds.selected[0, 0, 0] >= 0  # the good part's hard negative
    for seed in range(5):
        x, label = ds[(1, seed)]
        assert label == 1 and int(x.max()) == 255
    assert not mil.due(3) and mil.due(5)
    # a good part: any of its tiles, by the sample's seed
    seen = {tuple(ds[(0, s)][0].shape) for s in range(5)}
    assert seen == {(3, 16, 16)}


def test_mil_starts_from_the_tile_least_like_the_good_parts(tmp_path):
    from defectssft.modeling import build_model

    good, bad = _parts(tmp_path)
    torch.manual_seed(0)
    net = build_model("test_efficientnet", 2, weights="none").eval()
    ds = TileDataset([(good, 0), (bad, 1)], TileSpec(16, 16, overlap=0.0), 8, None,
                     random_labels=(0,))  # fmt: skip
    MilSelection(ds, every=5, batch=8).refresh(0, net, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    assert ds.selected[1, 0].tolist() == [48, 80]  # the only tile unlike every good tile


def test_tiled_validation_pools_whole_parts(tmp_path):
    good, bad = _parts(tmp_path)
    val = TiledVal([(good, 0), (bad, 1)], TileSpec(16, 16), 8, None, ok_index=0, batch=4)
    probs, labels = val.predict_pooled(BrightSpot(), [0.0] * 3, [1.0] * 3, torch.device("cpu"))
    assert labels.tolist() == [0, 1]
    assert probs[0, 1] < 0.01 and probs[1, 1] > 0.99


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiled_model_trains_evaluates_exports_and_runs_on_the_line(tmp_path, caplog):
    from defectssft.evaluate import evaluate_project_model
    from defectssft.export import export_project_model, read_metadata
    from defectssft.training import train_project
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    project = make_project(tmp_path, per_class=4, unlabeled=4)
    set_roi(project, ["4,4,32,30"])
    cfg = copy.deepcopy(TINY)
    cfg["input"] = {"height": 16, "width": 16}
    cfg["tiles"] = {"enabled": True, "mil_every": 2, "batch": 8}
    cfg["train"]["eval_every"] = 2
    with caplog.at_level("INFO", logger="defectssft"):
        version = train_project(project.root, cfg, handle_signals=False)
    assert "ROI 4,4,32,30" in caplog.text and "32x30 px -> 3x3 = 9 tiles" in caplog.text
    meta = project.get_model(version)["meta"]
    assert meta["input"]["roi"] == {"rects": [[4, 4, 32, 30]]}
    assert meta["input"]["tiles"]["pool"] == "max"
    evaluate_project_model(project, version)
    res = export_project_model(project, version)
    parity = project.get_model(version)["metrics"]["export_fp32"]["tiled_parity"]
    assert parity["tiles"] == 9 * parity["parts"] and parity["max_score_diff"] < 1e-3
    onnx_meta = read_metadata(res.path)
    assert onnx_meta["input"]["tiles"] == meta["input"]["tiles"]
    line = LineModel.load(res.path)
    paths = [r.path for r in project.query_images()][:2]
    preds = line.classify([read_image(p) for p in paths])
    assert len(preds) == 2 and all(p.verdict in ("OK", "NG", "UNSURE") for p in preds)


@pytest.mark.parametrize("tiled", [False, True])
def test_heat_map_of_a_roi_or_tiled_model_covers_only_what_it_explains(tmp_path, tiled):
    from defectssft.explain import grad_cam
    from defectssft.modeling import save_model_file
    from tests.helpers import tiny_meta, tiny_model

    meta = tiny_meta("v0001")
    meta["input"]["roi"] = {"rects": [[8, 4, 48, 32]]}
    if tiled:
        meta["input"]["tiles"] = {"scale": 1.0, "overlap": 0.0, "pool": "max", "top_k": 1}
    save_model_file(tmp_path / "model.pt", tiny_model(), meta)
    img = tmp_path / "part.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (48, 80), dtype=np.uint8))
    cam = grad_cam(tmp_path / "model.pt", img)
    assert cam.heat.shape == (48, 80)
    outside = np.ones((48, 80), bool)
    outside[4:36, 8:56] = False
    assert cam.heat[outside].max() == 0.0  # nothing outside the ROI
    if tiled:  # one 32 x 32 tile of the 48 x 32 ROI: at most 32 columns lit
        assert (cam.heat.max(axis=0) > 0).sum() <= 32


def test_init_like_proposes_height_width_and_the_tile_grid(tmp_path, capsys):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (h, w) in enumerate([(1260, 500), (1240, 500), (1250, 500)]):
        cv2.imwrite(str(folder / f"p{i}.png"), np.zeros((h, w), np.uint8))
    rc, out, _ = run(
        ["init", str(tmp_path / "proj"), "--classes", "ok,ng", "--like", str(folder)], capsys
    )
    assert rc == 0
    assert "median 500x1250 px (w x h), 3 different sizes" in out
    assert "--set input.height=192 --set input.width=96" in out  # tall parts stay tall
    assert "13x5 = 65 tiles of 128x128 px per 500x1250 image" in out
    assert "the resize shrinks the parts 5.2x or more: a defect thinner than about 5 px" in out
    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "s.png"), np.zeros((256, 256), np.uint8))
    rc, out, _ = run(["init", str(tmp_path / "p3"), "--like", str(small)], capsys)
    assert rc == 0 and "input.height=128 --set input.width=128" in out
    assert "shrinks" not in out  # 2x: nothing to warn of
    rc, _, err = run(["init", str(tmp_path / "p2"), "--like", str(tmp_path / "none")], capsys)
    assert rc == 2 and "no such file or folder" in err and not (tmp_path / "p2").exists()
