"""The anomaly head of a tiled model: fit on the good parts' tiles, the part's anomaly score the
maximum over its tiles and its map stitched from theirs, the same in torch (evaluation, the
app) and on the line (export's parity check, ``LineModel``), and the choices a tiled head
refuses in one line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft.anomaly import AnomalyError, fit_project_anomaly, image_scorer, torch_anomaly
from defectssft.cli import main
from defectssft.export import export_project_model
from defectssft.inspection import load_inspection
from defectssft_line.tiles import TileError, TileSpec, stitch
from tests.helpers import make_project, tiny_meta, tiny_model

TILE = 16
ROI = [4, 4, 32, 30]  # x, y, w, h of the 40 x 40 synthetic parts: a 3 x 3 grid of tiles


def _tiled_version(project) -> str:
    from defectssft.modeling import save_model_file

    version, folder = project.new_model_dir()
    meta = tiny_meta(version)
    meta["input"] = {"height": TILE, "width": TILE, "bit_depth": 8, "roi": {"rects": [ROI]},
                     "tiles": {"scale": 1.0, "overlap": 0.25, "pool": "max", "top_k": 1}}  # fmt: skip
    save_model_file(folder / "model.pt", tiny_model(), meta)
    project.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    return version


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled_anomaly")
    project = make_project(root, per_class=6, unlabeled=4)
    version = _tiled_version(project)
    model = fit_project_anomaly(project, version)
    return project, version, model


def _odd_part(path: Path) -> Path:
    """A good-looking part with a patch unlike anything in the fit, in its lower right."""
    img = np.full((40, 40, 3), 120, np.uint8)
    img[26:34, 26:34] = (0, 0, 255)  # BGR red
    cv2.imwrite(str(path), img)
    return path


def test_stitch_takes_the_maximum_where_tiles_overlap_and_cuts_the_padding():
    spec = TileSpec(8, 8, overlap=0.5)
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0), np.full((2, 2), 2.0)])
    out = stitch(maps, [(0, 0), (0, 4), (0, 8)], (8, 16), spec)
    assert out.shape == (2, 4)
    assert out[0].tolist() == [1.0, 3.0, 3.0, 2.0]  # cell 2 is both tiles': the larger
    # a 12-column image padded to 16: the map covers its 12 columns (3 cells) only
    assert stitch(maps, [(0, 0), (0, 4), (0, 8)], (8, 16), spec, (8, 12)).shape == (2, 3)
    with pytest.raises(TileError, match="cannot stitch"):
        stitch(maps[:2], [(0, 0), (0, 4), (0, 8)], (8, 16), spec)


def test_fit_uses_the_good_parts_tiles_and_scores_a_part_by_its_worst_tile(tiled):
    project, version, model = tiled
    assert model.map_size == [TILE // 8, TILE // 8]  # a tile's map
    assert model.threshold > 0 and model.n_fit_images >= 2
    summary = project.get_model(version)["metrics"]["anomaly"]
    assert summary["threshold"] == model.threshold and summary["test"]["n"] >= 1
    # the part's score is the largest of its tiles' scores, each the head's graph on the tile
    from defectssft.tiling import roi_of, tiles_of
    from defectssft_line import tiles as T
    from defectssft_line.preprocess import read_image

    folder = Path(project.get_model(version)["path"])
    inspection, spec = load_inspection(folder / "model.pt")
    path = project.training_data().test[0][0]
    source = T.tile_source(read_image(path), tiles_of(spec), 8, roi_of(spec))
    cut = np.concatenate([b for _, b in T.iter_tile_batches(source, tiles_of(spec))])
    assert len(cut) == 9
    per_tile, maps = torch_anomaly(model.wrap(inspection), cut)
    part = image_scorer(model, inspection, spec)([Path(path)])
    assert part[0] == pytest.approx(per_tile.max(), rel=1e-5)


def test_export_checks_the_parts_anomaly_and_the_line_flags_the_novel_tile(tmp_path, tiled, capsys):
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    project, version, model = tiled
    res = export_project_model(project, version, out=tmp_path / "m.onnx")
    parity = project.get_model(version)["metrics"]["export_fp32"]["tiled_parity"]
    assert parity["max_anomaly_rel_diff"] < 5e-3 and parity["tiles"] == 9 * parity["parts"]
    line = LineModel.load(res.path)
    assert line.novelty is not None and line.tiles is not None
    odd = read_image(_odd_part(tmp_path / "odd.png"))
    pred = line.classify([odd])[0]
    assert pred.novel is True and pred.anomaly_score >= model.threshold
    if pred.verdict != "NG":  # the classifier's NG stands; otherwise novel means UNSURE
        assert pred.verdict == "UNSURE"
    # the map covers the ROI (32 x 30 px at 8 px a cell), hottest where the red patch is
    amap = pred.anomaly_map
    assert amap.shape == (4, 4)
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    assert y >= 2 and x >= 2  # the patch is at 22-30 px of the ROI: the lower right cells
    # a good part is not novel, and the record carries the anomaly score either way
    good = read_image(project.training_data().test[0][0])
    again = line.classify([good])[0]
    assert again.anomaly_score is not None and again.anomaly_score < pred.anomaly_score
    # the line's command: the record says novel, and the overlay is drawn over the ROI
    import json

    from defectssft_line.cli import main as line_main

    parts, maps = tmp_path / "parts", tmp_path / "maps"
    parts.mkdir()
    _odd_part(parts / "odd.png")
    assert line_main(["run", "--model", res.path, "--input", str(parts), "--save-maps",
                      str(maps)]) == 0  # fmt: skip
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["novel"] is True and rec["anomaly_score"] == pytest.approx(
        pred.anomaly_score, abs=1e-6
    )
    overlay = cv2.imread(str(maps / "odd.anomaly.png"))
    assert overlay.shape == (ROI[3], ROI[2], 3)


def test_evaluation_and_the_app_score_tiled_parts_as_the_line(tmp_path, tiled):
    from defectssft.anomaly import anomaly_view
    from defectssft.evaluate import head_scores

    project, version, model = tiled
    folder = Path(project.get_model(version)["path"])
    wrapper, spec = load_inspection(folder / "model.pt")
    odd = _odd_part(tmp_path / "odd.png")
    got = head_scores(folder, wrapper, spec, [(-7, odd)], {})
    want = image_scorer(model, wrapper, spec)([odd])[0]
    assert got == {-7: pytest.approx(float(want))}
    view = anomaly_view(folder, odd)
    assert view.score == pytest.approx(float(want), rel=1e-5) and view.peak is None
    assert view.heat.shape == (40, 40)
    x, y, w, h = ROI
    outside = np.ones((40, 40), bool)
    outside[y : y + h, x : x + w] = False
    assert view.heat[outside].max() == 0.0 and view.heat[26:34, 26:34].max() > 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--scores", "patchcore,energy"], "the patch bank alone"),
        (["--peak-window", "3"], "no refined peak"),
        (["--fit-flips", "h"], "unmirrored tiles"),
    ],
)
def test_a_tiled_head_refuses_what_it_cannot_do_in_one_line(tmp_path, capsys, args, says):
    project = make_project(tmp_path, per_class=4, unlabeled=0)
    version = _tiled_version(project)
    rc = main(["fit-anomaly", str(project.root), "--model", version, *args])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and err.count("\n") == 1
    assert not (Path(project.get_model(version)["path"]) / "anomaly.json").exists()
    with pytest.raises(AnomalyError, match=says):
        fit_project_anomaly(project, version, **{
            "--scores": {"scores": "patchcore,energy"}, "--peak-window": {"peak_window": 3},
            "--fit-flips": {"fit_flips": "h"}}[args[0]])  # fmt: skip


def test_the_apps_map_of_an_untiled_roi_model_is_the_rois(tmp_path):
    """The app's map is computed on what the line scores (the ROI resized to the input) and
    drawn over the ROI only, as the line's overlays are."""
    from defectssft.anomaly import anomaly_view
    from defectssft.inspection import load_images
    from defectssft.modeling import save_model_file

    project = make_project(tmp_path, per_class=4, unlabeled=2)
    version, folder = project.new_model_dir()
    meta = tiny_meta(version)
    meta["input"]["roi"] = {"rects": [ROI]}
    save_model_file(folder / "model.pt", tiny_model(), meta)
    project.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    model = fit_project_anomaly(project, version)
    odd = _odd_part(tmp_path / "odd.png")
    view = anomaly_view(folder, odd)
    wrapper, spec = load_inspection(folder / "model.pt")
    inp = spec.input
    want, _ = torch_anomaly(
        model.wrap(wrapper), load_images([odd], inp.height, inp.width, 8, inp.roi)
    )
    assert view.score == pytest.approx(float(want[0]), rel=1e-5)
    x, y, w, h = ROI
    outside = np.ones((40, 40), bool)
    outside[y : y + h, x : x + w] = False
    assert view.heat.shape == (40, 40) and view.heat[outside].max() == 0.0
    assert view.heat[26:34, 26:34].max() > 0
    if view.peak is not None:
        assert x <= view.peak[0] <= x + w and y <= view.peak[1] <= y + h


def test_the_tile_budget_bounds_what_a_tiled_fit_reads_and_scores(tmp_path, monkeypatch):
    """Large frames have thousands of tiles: the fit reads good parts, and scores held-out and
    unlabeled ones, only while ``MAX_TILED_TILES`` lasts, and says so."""
    import defectssft.anomaly as A

    monkeypatch.setattr(A, "MAX_TILED_TILES", 20)  # 9 tiles a part: 3 parts read
    project = make_project(tmp_path, per_class=8, unlabeled=6)
    version = _tiled_version(project)
    said: list[str] = []
    model = fit_project_anomaly(project, version, say=said.append)
    assert any("3 of " in s and "27 tiles: the budget is 20" in s for s in said), said
    assert model.n_fit_images + model.n_held_out <= 3
    summary = project.get_model(version)["metrics"]["anomaly"]
    assert summary["scored_unlabeled"] == A.MIN_HELD_OUT  # 20 // 9 = 2, at least 5
