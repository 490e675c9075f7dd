"""Region of interest and tiles on the line side (no torch): the ROI crop and its errors, the
tiling rule (grid, padding, pooling, bounded batches), the metadata schema of both, and the line
runtime scoring a large frame tile by tile where a resize would erase a 3 px defect."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectssft_line import tiles as T
from defectssft_line.cli import main
from defectssft_line.metadata import MetadataError, validate_metadata
from defectssft_line.model import LineModel, LineModelError
from defectssft_line.preprocess import ImageDecodeError, prepare
from defectssft_line.roi import Roi, RoiError, parse_rect
from defectssft_line.tiles import TileError, TileSpec
from tests.helpers import line_metadata

TILE = 32


def bright_spot_model(path: Path, size: int = TILE, **input_extra) -> Path:
    """An ONNX model of the line contract (classes ok, ng) whose NG logit is
    ``20 * max(pixel) / 255 - 10``: a tile holding one 255 pixel scores ~1, a plain 60-grey
    tile ~0. What the model sees decides the verdict, as with a real defect."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),  # [N, 1]
        helper.make_node("Mul", ["m1", "gain"], ["g"]),
        helper.make_node("Add", ["g", "offset"], ["ng"]),  # [N, 1]
        helper.make_node("Mul", ["m1", "zero"], ["okl"]),  # [N, 1] zeros
        helper.make_node("Concat", ["okl", "ng"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Gather", ["probs", "one"], ["s1"], axis=1),
        helper.make_node("Squeeze", ["s1", "axis1"], ["defect_score"]),
    ]
    inits = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0 / 255.0]),
        helper.make_tensor("offset", TensorProto.FLOAT, [], [-10.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "bright_spot",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("defect_score", TensorProto.FLOAT, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = line_metadata({"ng": 0.5, "unsure_low": 0.5, "unsure_high": 0.5})
    meta["classes"], meta["ok_class"] = ["ok", "ng"], "ok"
    meta["input"].update(height=size, width=size, **input_extra)
    entry = model.metadata_props.add()
    entry.key, entry.value = "defectssft", json.dumps(meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def part(h: int = 300, w: int = 400, spot: tuple[int, int] | None = (200, 310)) -> np.ndarray:
    """A plain 60-grey gray frame with a 3 x 3 px white defect at ``spot`` (y, x)."""
    img = np.full((h, w), 60, np.uint8)
    if spot is not None:
        y, x = spot
        img[y : y + 3, x : x + 3] = 255
    return img


# --------------------------------------------------------------------------- ROI


def test_roi_crop_rects_and_mask():
    img = np.arange(100 * 120, dtype=np.uint16).reshape(100, 120)
    one = Roi.from_rects(["10,20,30,40"])
    assert one.bbox == (10, 20, 30, 40) and one.size == (40, 30)
    assert np.array_equal(one.apply(img), img[20:60, 10:40])
    two = Roi.from_rects(["0,0,10,10", "50,50,10,10"])
    out = two.apply(np.full((100, 120, 3), 9, np.uint8))
    assert out.shape == (60, 60, 3)
    assert out[:10, :10].min() == 9 and out[50:, 50:].min() == 9
    assert out[20:40, 20:40].max() == 0  # between the rectangles: black
    mask = np.zeros((100, 120), np.uint8)
    mask[:, :60] = 1
    masked = Roi.from_rects(["40,0,40,10"], mask).apply(np.full((100, 120), 5, np.uint8))
    assert masked[:, :20].min() == 5 and masked[:, 20:].max() == 0
    # prepare applies it first, then colour and resize
    assert prepare(img.astype(np.uint8), 8, 6, 8, one).shape == (8, 6, 3)


@pytest.mark.parametrize(
    "text", ["1,2,3", "a,b,c,d", "1,2,0,4", "-1,0,4,4", "1,2,3,4,5", "", "1.5,2,3,4"]
)
def test_malformed_rectangles_are_one_line_errors(text):
    with pytest.raises(RoiError) as e:
        parse_rect(text)
    assert "\n" not in str(e.value)


def test_roi_outside_an_image_names_the_image():
    roi = Roi.from_rects(["300,10,200,50"])
    assert roi.fits(600, 100) is None
    with pytest.raises(RoiError, match=r"part\.png: region of interest 300,10,200,50 .* 400x100"):
        roi.apply(np.zeros((100, 400), np.uint8), "part.png")
    assert isinstance(RoiError("x"), ImageDecodeError)  # the line's per-image error path
    mask_roi = Roi.from_rects(["0,0,10,10"], np.ones((50, 50), np.uint8))
    assert "mask is 50x50" in mask_roi.fits(60, 50)


def test_roi_metadata_round_trip():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 5:50] = 255
    roi = Roi.from_rects(["1,2,30,20", "40,2,10,10"], mask)
    back = Roi.from_meta(json.loads(json.dumps(roi.to_meta())))
    assert back == roi and np.array_equal(back.mask, roi.mask)
    img = np.full((40, 60), 7, np.uint8)
    assert np.array_equal(back.apply(img), roi.apply(img))


# --------------------------------------------------------------------------- the tiling rule


def test_axis_starts_cover_the_side_with_at_least_the_overlap():
    for length in (32, 33, 50, 100, 257, 1000):
        for overlap in (0.0, 0.25, 0.5):
            s = T.axis_starts(length, 32, overlap)
            assert s[0] == 0 and s[-1] + 32 == length
            steps = np.diff(s)
            assert (steps <= int(32 * (1 - overlap))).all() and (steps >= 1).all()
    assert T.axis_starts(20, 32, 0.25) == [0]


def test_grid_per_image_size_and_frame_smaller_than_a_tile():
    spec = TileSpec(TILE, TILE, overlap=0.25)
    assert T.grid_shape(300, 400, spec) == (13, 17)
    assert T.grid_shape(64, 64, spec) == (3, 3)
    assert T.grid_shape(300, 400, TileSpec(TILE, TILE, scale=0.5)) == (6, 8)
    # smaller than one tile: mirrored up to one tile, one tile
    small = T.tile_source(np.full((10, 20), 80, np.uint8), spec, 8)
    assert small.shape == (TILE, TILE, 3) and small.min() == 80
    assert T.grid(10, 20, spec) == [(0, 0)]
    # taller than a tile, narrower than one: one column
    assert T.grid_shape(100, 5, spec) == (4, 1)


def test_pooling_max_and_topk():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]], np.float32)
    scores = probs[:, 1]
    p, s = T.pool(probs, scores, TileSpec(TILE, TILE, pool="max"))
    assert s == pytest.approx(0.8) and p.tolist() == pytest.approx([0.2, 0.8])
    p, s = T.pool(probs, scores, TileSpec(TILE, TILE, pool="topk", top_k=2))
    assert s == pytest.approx(0.7) and p.tolist() == pytest.approx([0.3, 0.7])
    p, s = T.pool(probs, scores, TileSpec(TILE, TILE, pool="topk", top_k=10))  # k > tiles
    assert s == pytest.approx(scores.mean())


def test_tiles_come_in_bounded_batches():
    spec = TileSpec(TILE, TILE)
    src = T.tile_source(part(), spec, 8)
    seen: list[int] = []

    def predict(batch):
        seen.append(len(batch))
        return np.tile([[1.0, 0.0]], (len(batch), 1)), batch.reshape(len(batch), -1).max(1) / 255

    res = T.score_source(predict, src, spec, batch=7)
    assert max(seen) <= 7 and sum(seen) == 13 * 17 == len(res.positions)
    y, x = res.tile
    assert y <= 200 < y + TILE and x <= 310 < x + TILE and res.score == 1.0


@pytest.mark.parametrize(
    ("tiles", "msg"),
    [
        ({"pool": "median"}, "input.tiles.pool"),
        ({"overlap": 0.95}, "input.tiles.overlap"),
        ({"scale": 0}, "input.tiles.scale"),
        ({"scale": "big"}, "input.tiles.scale"),
        ({"top_k": 0}, "input.tiles.top_k"),
        ({"stride": 3}, "unknown key"),
        ([1, 2], "input.tiles must be an object"),
    ],
)
def test_bad_tiling_rule_in_metadata_is_refused(tiles, msg):
    meta = line_metadata({"ng": 0.5})
    meta["input"]["tiles"] = tiles
    with pytest.raises(MetadataError, match=msg):
        validate_metadata(meta)
    with pytest.raises(TileError):
        TileSpec.from_meta(tiles, TILE, TILE)


@pytest.mark.parametrize(
    ("roi", "msg"),
    [
        ({"rects": []}, "input.roi.rects"),
        ({"rects": [[0, 0, 0, 5]]}, "w and h >= 1"),
        ({"rects": [[0, 0, "a", 5]]}, "4 integers"),
        ({"rects": [[0, 0, 5, 5]], "mask": "not base64!"}, "input.roi.mask"),
        ("0,0,5,5", "input.roi must be an object"),
    ],
)
def test_bad_roi_in_metadata_is_refused(roi, msg):
    meta = line_metadata({"ng": 0.5})
    meta["input"]["roi"] = roi
    with pytest.raises(MetadataError, match=msg):
        validate_metadata(meta)


def test_tile_count_limit_is_one_line():
    with pytest.raises(TileError, match="lower input.tiles.scale"):
        T.grid(20000, 20000, TileSpec(16, 16, scale=4.0, overlap=0.9))


# --------------------------------------------------------------------------- the line runtime


def test_line_scores_tiles_and_finds_a_3px_defect_a_resize_erases(tmp_path):
    resized = LineModel.load(bright_spot_model(tmp_path / "resize.onnx"))
    tiled = LineModel.load(
        bright_spot_model(tmp_path / "tiles.onnx", tiles={"overlap": 0.25, "pool": "max"})
    )
    assert tiled.tiles == TileSpec(TILE, TILE) and resized.tiles is None
    good, bad = part(spot=None), part()
    assert [p.verdict for p in resized.classify([good, bad])] == ["OK", "OK"]  # erased
    assert [p.verdict for p in tiled.classify([good, bad])] == ["OK", "NG"]
    calls: list[int] = []
    real = tiled._tile_outputs
    tiled._tile_outputs = lambda b, exact=False: (calls.append(len(b)), real(b, exact))[1]  # type: ignore[method-assign]
    tiled.tile_batch = 5
    assert tiled.score_tiles(bad).score > 0.99
    assert max(calls) <= 5 and sum(calls) == 13 * 17


def test_line_roi_crops_and_an_outside_roi_is_a_per_image_error(tmp_path, capsys):
    # the defect lies outside the ROI: not seen; a frame smaller than the ROI: an ERROR row
    model_path = bright_spot_model(
        tmp_path / "m.onnx", roi={"rects": [[0, 0, 200, 150]]}, tiles={"overlap": 0.25}
    )
    model = LineModel.load(model_path)
    assert model.classify([part()])[0].verdict == "OK"
    assert model.classify([part(spot=(100, 100))])[0].verdict == "NG"
    files = tmp_path / "in"
    files.mkdir()
    cv2.imwrite(str(files / "a_big.png"), part(spot=(100, 100)))
    cv2.imwrite(str(files / "b_small.png"), part(100, 100, spot=None))
    rc = main(["run", "--model", str(model_path), "--input", str(files)])
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert rc == 1
    assert rows[0]["verdict"] == "NG"
    assert rows[1]["verdict"] == "ERROR"
    assert (
        "region of interest 0,0,200,150 (x,y,w,h) lies outside the 100x100 image"
        in (rows[1]["error"])
    )


def test_images_of_different_sizes_get_their_own_grid(tmp_path):
    model = LineModel.load(bright_spot_model(tmp_path / "t.onnx", tiles={"overlap": 0.5}))
    for h, w in ((40, 40), (300, 400), (33, 1000), (10, 10)):
        res = model.score_tiles(part(h, w, spot=None))
        rows, cols = T.grid_shape(h, w, model.tiles)
        assert len(res.positions) == rows * cols and res.score < 0.01


def test_model_with_bad_roi_metadata_is_refused_at_load(tmp_path):
    bad = bright_spot_model(tmp_path / "bad.onnx", roi={"rects": [[0, 0, -1, 5]]})
    with pytest.raises(LineModelError, match="w and h >= 1"):
        LineModel.load(bad)
