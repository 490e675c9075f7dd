"""Fuzzing ingest and the line's decoder with ``hypothesis``: truncated, padded and bit-flipped
JPEG, PNG, BMP and TIFF bytes, odd sizes, 16-bit and alpha images, and odd file names.

Every input ends as stored, quarantined with a one-line reason, or an ERROR record: never an
exception, never a partial batch. ``DEFECTSSFT_FUZZ_EXAMPLES`` sets the number of examples per
test (default 40; RELIABILITY.md has the figures of a larger run).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectssft.check import check_project
from defectssft.ingest import import_paths
from defectssft.project import Project
from defectssft_line.preprocess import ImageDecodeError, decode_image
from tests.helpers import add_bytes

EXAMPLES = int(os.environ.get("DEFECTSSFT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXTS = (".jpg", ".png", ".bmp", ".tif")


@st.composite
def images(draw) -> tuple[bytes, str]:
    """A valid encoded image of a random format, size, depth and channel count."""
    ext = draw(st.sampled_from(EXTS))
    h = draw(st.integers(1, 48))
    w = draw(st.integers(1, 48))
    channels = draw(st.sampled_from([1, 3, 4] if ext in (".png", ".tif") else [1, 3]))
    deep = ext in (".png", ".tif") and draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    dtype, hi = (np.uint16, 65535) if deep else (np.uint8, 255)
    shape = (h, w) if channels == 1 else (h, w, channels)
    img = rng.integers(0, hi, size=shape, endpoint=True).astype(dtype)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes(), ext


@st.composite
def mutated(draw) -> tuple[bytes, str, str]:
    """(bytes, suffix to name the file with, what was done)."""
    data, ext = draw(images())
    kind = draw(
        st.sampled_from(
            ["valid", "truncate", "pad", "flip", "header", "zero", "junk", "wrong_suffix"]
        )
    )
    b = bytearray(data)
    if kind == "truncate":
        b = b[: draw(st.integers(0, max(0, len(b) - 1)))]
    elif kind == "pad":
        b += draw(st.binary(min_size=1, max_size=300))
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "header":  # random bytes in the first 64 (sizes, chunk lengths, offsets)
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, min(63, len(b) - 1)))
            b[i] = draw(st.integers(0, 255))
    elif kind == "zero":
        b = bytearray()
    elif kind == "junk":
        b = bytearray(draw(st.binary(max_size=200)))
    elif kind == "wrong_suffix":
        ext = draw(st.sampled_from([e for e in EXTS if e != ext]))
    return bytes(b), ext, kind


NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0")


@st.composite
def names(draw, ext: str) -> str:
    """A file name: unicode, spaces, leading dashes, or raw non-UTF-8 bytes."""
    if draw(st.booleans()):
        raw = draw(st.binary(min_size=1, max_size=20).filter(lambda x: b"/" not in x))
        stem = os.fsdecode(raw.replace(b"\0", b"_"))
    else:
        stem = draw(st.text(NAME_CHARS, min_size=1, max_size=30))
    stem = stem.lstrip(".") or "x"
    if len(os.fsencode(stem)) > 200:
        stem = stem[:40]
    return stem + ext


def _one_line(text: str | None) -> bool:
    return bool(text) and "\n" not in text and "Traceback" not in text


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Project:
    return Project.create(tmp_path_factory.mktemp("fuzz") / "proj", classes=["ok", "ng"])


@FUZZ
@given(case=mutated())
def test_ingest_bytes_stores_or_quarantines_with_a_reason(store: Project, case):
    data, ext, _ = case
    result = add_bytes(store, data, "part" + ext, source="fuzz")
    assert result.status in ("added", "duplicate", "quarantined")
    if result.status == "quarantined":
        assert _one_line(result.reason), result.reason
    else:
        record = store.get_image(result.image_id)
        assert record.path.read_bytes() == data


@FUZZ
@given(batch=st.lists(mutated(), min_size=1, max_size=6), data=st.data())
def test_import_batch_accounts_for_every_file(store: Project, tmp_path_factory, batch, data):
    folder = tmp_path_factory.mktemp("batch")
    written = set()
    for i, (raw, ext, _) in enumerate(batch):
        name = f"{i}_" + data.draw(names(ext))
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(name))))
        path.write_bytes(raw)
        written.add(path)
    before = store.count_images()
    summary = import_paths(store, [folder], source="fuzz")
    assert summary.total == len(written)
    assert store.count_images() == before + summary.added
    assert all(_one_line(reason) for _, reason in summary.problems)
    for path, _ in summary.problems:
        path.encode("utf-8")  # stored and printable


def test_the_fuzzed_store_is_whole(store: Project):
    """Runs after the two above (same module-scoped project): every row has its whole file."""
    report = check_project(store)
    assert report.ok, report.problems


@FUZZ
@given(case=mutated())
def test_line_decoder_returns_an_image_or_a_one_line_error(case):
    data, ext, _ = case
    try:
        img = decode_image(data, "part" + ext, max_pixels=10_000)
    except ImageDecodeError as e:
        assert _one_line(str(e)) and str(e).startswith("part")
        return
    assert img.dtype in (np.uint8, np.uint16) and img.ndim in (2, 3) and img.size > 0
    assert img.shape[0] * img.shape[1] <= 10_000


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from defectssft_line.cli import Runner
    from defectssft_line.hotswap import ModelHolder
    from defectssft_line.model import LineModel
    from defectssft_line.output import ResultWriter
    from tests.helpers import fixed_onnx_model as export_fixed

    model = export_fixed(tmp_path_factory.mktemp("model") / "m.onnx", [0.0, 0.0, 0.0])
    out = tmp_path_factory.mktemp("out") / "out.jsonl"
    writer = ResultWriter("jsonl", out)
    yield Runner(ModelHolder(model, LineModel.load, poll_s=3600), writer, None)
    writer.close()


@FUZZ
@given(case=mutated(), data=st.data())
def test_line_runner_scores_or_records_an_error(runner, case, data):
    raw, ext, _ = case
    name = data.draw(names(ext))
    rec = runner.score_bytes(name, raw)
    assert rec["verdict"] in ("OK", "NG", "UNSURE", "ERROR")
    if rec["verdict"] == "ERROR":
        assert _one_line(rec["error"]) and "Error:" not in rec["error"], rec["error"]
    rec["file"].encode("utf-8")
