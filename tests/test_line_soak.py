"""Line soak: ``defectssft-line run --watch`` fed a seeded stream of good images, every kind of bad
file and model swaps (good, corrupt, malformed metadata, newer format, a hostile pickle).

It must never exit, score every good image exactly once with a good model, set every bad file
aside with a reason, report each bad model once and keep running the previous one, and its
memory must stay flat. ``DEFECTSSFT_SOAK_FILES`` sets the stream length (default 60),
``DEFECTSSFT_SOAK_REPORT=FILE`` writes the figures as JSON (RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from defectssft_line.names import safe_text
from tests.conftest import noise_image
from tests.helpers import fixed_onnx_model as export_fixed
from tests.helpers import huge_png, with_metadata

REPO = Path(__file__).resolve().parents[1]
FILES = int(os.environ.get("DEFECTSSFT_SOAK_FILES", "60"))
GOOD_VERSIONS = {"v0001", "v0002", "v0003"}

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def _encoded(ext: str, seed: int) -> bytes:
    rng = random.Random(seed)
    h, w = rng.randint(8, 64), rng.randint(8, 64)
    ok, buf = cv2.imencode(ext, noise_image(h, w, channels=rng.choice([1, 3]), seed=seed))
    assert ok
    return buf.tobytes()


def bad_files(seed: int) -> dict[str, bytes]:
    """One file of every kind of bad input, keyed by the name it is dropped under."""
    jpg, png = _encoded(".jpg", seed), _encoded(".png", seed + 1)
    flipped = bytearray(jpg)
    flipped[2] ^= 0xFF  # the JPEG magic itself
    wide = bytearray(_encoded(".bmp", seed + 2))
    wide[18:22] = (0x01000001).to_bytes(4, "little")
    return {
        f"zero-{seed}.png": b"",
        f"cut-{seed}.jpg": jpg[: len(jpg) // 2],
        f"cut-{seed}.png": png[: len(png) // 2],
        f"text-{seed}.png": b"this is not an image\n",
        f"bomb-{seed}.png": huge_png(),
        f"flipped-{seed}.jpg": bytes(flipped),
        f"wide-{seed}.bmp": bytes(wide),
        f"pdf-{seed}.tif": b"%PDF-1.4 not a tiff",
    }


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _drop(folder: Path, name: str, data: bytes) -> None:
    """Write under a hidden name, then rename: what a camera's atomic write looks like."""
    tmp = folder / f".{time.time_ns()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, os.path.join(os.fsencode(folder), os.fsencode(name)))


def _swap(live: Path, src: Path) -> None:
    tmp = live.with_name(".live.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, live)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("soak-models")
    v1 = export_fixed(d / "v1.onnx", [0.0, 0.0, 0.0], version="v0001")
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(v1.read_bytes()[: v1.stat().st_size // 2])
    hostile = d / "hostile.onnx"
    hostile.write_bytes(b"\x80\x04cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    return {
        "v0001": v1,
        "v0002": export_fixed(d / "v2.onnx", [5.0, 0.0, 0.0], version="v0002"),
        "corrupt": corrupt,
        "malformed": with_metadata(
            v1, d / "malformed.onnx", lambda m: {**m, "input": {"width": 32}}
        ),
        "newer": with_metadata(v1, d / "newer.onnx", lambda m: {**m, "format_version": 99}),
        "hostile": hostile,
        "v0003": export_fixed(d / "v3.onnx", [0.0, 5.0, 0.0], version="v0003"),
    }


SWAPS = ("v0002", "corrupt", "malformed", "newer", "hostile", "v0003")


def test_line_soak_never_stops_and_scores_every_good_image(model_files, tmp_path):
    rng = random.Random(14)
    live, hot, out = tmp_path / "live.onnx", tmp_path / "hot", tmp_path / "out.jsonl"
    hot.mkdir()
    shutil.copyfile(model_files["v0001"], live)
    cmd = [sys.executable, "-m", "defectssft_line.cli", "run", "--model", str(live)]
    cmd += ["--watch", str(hot), "--settle", "0", "--poll", "0.02", "--give-up", "0.3"]
    cmd += ["--reload-poll", "0", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "deploy")}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()

    def scored() -> list[dict]:
        if not out.exists():
            return []
        return [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]

    def settle(n_records: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, "".join(errors)
            pending = [p for p in hot.iterdir() if p.is_file() and not p.name.startswith(".")]
            if not pending and len(scored()) >= n_records:
                return
            time.sleep(0.02)
        raise AssertionError(f"the runtime did not keep up: {pending}, {len(scored())} records")

    good: list[str] = []
    bad: list[str] = []
    swaps = {"good": 0, "bad": 0}
    expected_records = 0
    rss_warm = None
    kinds = list(bad_files(0))
    try:
        for i in range(FILES):
            roll = rng.random()
            if roll < 0.1:  # a model swap, then one good image to be sure it was looked at
                which = SWAPS[(swaps["good"] + swaps["bad"]) % len(SWAPS)]
                _swap(live, model_files[which])
                swaps["good" if which.startswith("v") else "bad"] += 1
                name = f"probe-{i}.png"
                _drop(hot, name, _encoded(".png", 10_000 + i))
                good.append(name)
                expected_records += 1
            elif roll < 0.4:  # a bad file
                files = bad_files(i)
                name = kinds[len(bad) % len(kinds)].replace("-0.", f"-{i}.")
                _drop(hot, name, files[name])
                bad.append(name)
                if not name.startswith(("zero-", "cut-")):
                    expected_records += 1  # whole but unreadable: an ERROR record
            else:
                ext = rng.choice([".png", ".jpg", ".bmp", ".tif"])
                stem = os.fsdecode(b"teil-\xe9-" + str(i).encode()) if i % 7 == 0 else f"g{i}"
                name = stem + ext
                _drop(hot, name, _encoded(ext, i))
                good.append(name)
                expected_records += 1
            settle(expected_records)
            if rss_warm is None and i >= FILES // 4:
                rss_warm = _rss_kb(proc.pid)
        settle(expected_records)
        rss_end = _rss_kb(proc.pid)
        assert proc.poll() is None, "the line stopped"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    reader.join(timeout=10)
    records = scored()
    by_name = {}
    for r in records:
        by_name.setdefault(Path(r["file"]).name, []).append(r)
    for name in good:
        recs = by_name.get(safe_text(name), [])
        assert len(recs) == 1, (name, recs)
        assert recs[0]["verdict"] in ("OK", "NG", "UNSURE"), recs[0]
        assert recs[0]["model_version"] in GOOD_VERSIONS
    failed = {p.name for p in (hot / "failed").iterdir() if not p.name.endswith(".reason.txt")}
    assert failed == {safe_text(n) for n in bad} or failed == set(bad)
    assert all((hot / "failed" / (n + ".reason.txt")).exists() for n in failed)
    rejected = [e for e in errors if "new model file rejected" in e]
    updated = [e for e in errors if e.startswith("model updated")]
    assert len(rejected) == swaps["bad"] and len(updated) == swaps["good"], errors
    assert not any("Traceback" in e for e in errors), "".join(errors)
    assert rc == 0
    growth_mb = (rss_end - (rss_warm or rss_end)) / 1024
    figures = {
        "files": FILES,
        "good_images": len(good),
        "good_scored": sum(1 for n in good if safe_text(n) in by_name),
        "bad_files": len(bad),
        "bad_kinds": len(kinds),
        "model_swaps_good": swaps["good"],
        "model_swaps_bad": swaps["bad"],
        "line_exits": 0,
        "rss_warm_mb": round((rss_warm or 0) / 1024, 1),
        "rss_end_mb": round(rss_end / 1024, 1),
    }
    if os.environ.get("DEFECTSSFT_SOAK_REPORT"):
        Path(os.environ["DEFECTSSFT_SOAK_REPORT"]).write_text(json.dumps(figures, indent=2))
    assert growth_mb < 40, figures
