"""The model metadata schema: a malformed model file is refused with one line at start-up, and
on a hot swap the running model stays (reported once)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from defectssft_line.cli import main
from defectssft_line.hotswap import ModelHolder
from defectssft_line.metadata import MetadataError, validate_metadata
from defectssft_line.model import LineModel, LineModelError
from tests.helpers import fixed_onnx_model as export_fixed
from tests.helpers import with_metadata


def _input(**change):
    def edit(m):
        inp = {**m["input"], **change}
        return {**m, "input": {k: v for k, v in inp.items() if v is not ...}}

    return edit


def _thresholds(**change):
    return lambda m: {**m, "thresholds": {**(m.get("thresholds") or {}), **change}}


MALFORMED = {
    "no_height": (_input(height=...), "input.height"),
    "height_abc": (_input(height="abc"), "input.height must be an integer"),
    "width_zero": (_input(width=0), "input.width must be an integer"),
    "height_bool": (_input(height=True), "input.height"),
    "bit_depth_0": (_input(bit_depth=0), "input.bit_depth must be an integer from 8 to 16"),
    "max_pixels_neg": (_input(max_pixels=-5), "input.max_pixels"),
    "input_list": (lambda m: {**m, "input": [1, 2]}, "input must be an object"),
    "ng_high": (_thresholds(ng="high"), "thresholds.ng must be a number"),
    "ng_nan": (_thresholds(ng=float("nan")), "thresholds.ng must be a number"),
    "ng_two": (_thresholds(ng=2), "thresholds.ng must be between 0 and 1"),
    "band_reversed": (_thresholds(unsure_low=0.9, unsure_high=0.1), "thresholds must satisfy"),
    "thresholds_str": (lambda m: {**m, "thresholds": "x"}, "thresholds must be an object"),
    "no_classes": (lambda m: {**m, "classes": []}, "lists no classes"),
    "class_numbers": (lambda m: {**m, "classes": [1, 2, 3]}, "classes must be distinct"),
    "classes_twice": (lambda m: {**m, "classes": ["a", "a", "b"]}, "classes must be distinct"),
    "ok_unknown": (lambda m: {**m, "ok_class": "good"}, "ok_class 'good'"),
    "version_float": (lambda m: {**m, "format_version": 1.0}, "format_version"),
    "newer": (lambda m: {**m, "format_version": 3}, "newer than this runtime"),
    "recheck_negative": (lambda m: {**m, "recheck": {"logit": -1}}, "recheck.logit must be"),
    "recheck_str": (lambda m: {**m, "recheck": "yes"}, "recheck must be an object"),
    "version_list": (lambda m: {**m, "model_version": [1]}, "model_version must be a string"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return export_fixed(tmp_path_factory.mktemp("m") / "good.onnx", [0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def malformed(good, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    return {
        name: with_metadata(good, d / f"{name}.onnx", change)
        for name, (change, _) in MALFORMED.items()
    }


def test_schema_accepts_what_export_writes(good):
    meta = LineModel.load(good).meta
    assert validate_metadata(meta) is meta
    assert validate_metadata({**meta, "thresholds": None, "ok_class": None})


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_metadata_is_a_one_line_error_at_start_up(name, malformed, tmp_path, capsys):
    message = MALFORMED[name][1]
    with pytest.raises(LineModelError, match=message.replace("(", r"\(")):
        LineModel.load(malformed[name])
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["run", "--model", str(malformed[name]), "--input", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_schema_errors_name_the_field():
    with pytest.raises(MetadataError, match="lacks 'input'"):
        validate_metadata({"format": "defectssft-model", "format_version": 1, "classes": ["a"]})


def _replace(src: Path, dest: Path) -> None:
    tmp = dest.with_name(".swap.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def test_hot_swap_keeps_the_running_model_on_any_bad_file(good, malformed, tmp_path):
    live = tmp_path / "production.onnx"
    shutil.copyfile(good, live)
    logs: list[str] = []
    holder = ModelHolder(live, LineModel.load, poll_s=0, log=logs.append)
    first = holder.model
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bad_files = [*malformed.values(), corrupt]
    for bad in bad_files:
        _replace(bad, live)
        assert holder.check_for_update() is False
        assert holder.check_for_update() is False  # the same bad file: no second report
        assert holder.current() is first
    assert len(logs) == len(bad_files)
    assert all(line.startswith("warning: new model file rejected") for line in logs)
    assert all("\n" not in line for line in logs)
    newer = export_fixed(tmp_path / "v2.onnx", [5.0, 0.0, 0.0], version="v0002")
    _replace(newer, live)
    assert holder.check_for_update() is True and holder.model.version == "v0002"


def test_hot_swap_survives_a_loader_that_raises_anything(good, tmp_path):
    live = tmp_path / "production.onnx"
    shutil.copyfile(good, live)
    calls = {"n": 0}

    def load(path: Path) -> LineModel:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyError("height")
        return LineModel.load(path)

    logs: list[str] = []
    holder = ModelHolder(live, load, poll_s=0, log=logs.append)
    _replace(good, live)
    assert holder.check_for_update() is False and holder.model.version == "v0001"
    assert len(logs) == 1 and "KeyError" in logs[0]
