"""Which KolektorSDD defects the line passed: the held-out defects of ``decisions.py`` measured at
native resolution, with the escapes of given results files marked.

Per held-out defective part: the label polygons' area (px) and contrast (the polygons' mean grey
level against a ring of ``--ring`` px around them, in units of the ring's standard deviation),
ranked from the smallest / faintest. No model runs here; the escapes come from the results'
``escapes_detail``. ``--ssl-test`` measures the 20 defects of the fixed test set of
``ssl_kolektor.py`` / ``tiles_accuracy.py`` instead, to compare how hard the two sets are.

    .venv/bin/python benchmarks/escaped_parts.py benchmarks/results/decisions_full_kolektor_s1.json \\
        benchmarks/results/decisions_full_kolektor_s2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decisions as D  # noqa: E402
import default_path as dp  # noqa: E402
from open_set import kolektor_mask  # noqa: E402
from ssl_kolektor import split as ssl_split  # noqa: E402


def measure(image: Path, ring: int) -> tuple[int, float]:
    """(polygon area in px, contrast in the ring's standard deviations) of one KolektorSDD image."""
    img = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise SystemExit(f"cannot read {image}")
    mask = kolektor_mask(str(image)).astype(np.uint8)
    around = cv2.dilate(mask, np.ones((2 * ring + 1, 2 * ring + 1), np.uint8)) - mask
    inside, outside = img[mask > 0].astype(np.float64), img[around > 0].astype(np.float64)
    return int(mask.sum()), float((outside.mean() - inside.mean()) / outside.std())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*", type=Path, help="decisions.py results (kolektor cases)")
    ap.add_argument("--root", type=Path, default=dp.DATASETS)
    ap.add_argument("--ring", type=int, default=10)
    ap.add_argument(
        "--ssl-test",
        action="store_true",
        help="the defects of ssl_kolektor.py's fixed test set instead of decisions.py's held-out "
        "(read from ssl_kolektor.py's own data path: --root and the escapes do not apply)",
    )
    args = ap.parse_args(argv)
    runs = [
        (f.stem, r)
        for f in args.results
        for r in json.loads(f.read_text())["results"]
        if r.get("dataset") == "kolektor"
    ]
    seeds = [r["seed"] for _, r in runs]
    escaped: dict[str, list[str]] = {}
    for stem, r in runs:  # a seed in two files (two settings) is named with its file
        label = f"seed {r['seed']}" + (f" ({stem})" if seeds.count(r["seed"]) > 1 else "")
        for e in (r.get("escapes_detail") or {}).get("escapes", []):
            escaped.setdefault(e["name"], []).append(label)
    if args.ssl_test:  # the test split is fixed, whatever the seed
        parts = [(Path(p), "/".join(Path(p).parts[-2:])) for p, y in ssl_split(0)[1] if y == 1]
        held = "test defects (ssl_kolektor.py)"
    else:  # held-out parts: the same on every seed
        proto = D.protocol("kolektor", 0, False, args.root)
        parts = [(p.path, dp._held_name(p)) for p in proto.held if p.defective]  # noqa: SLF001
        held = "held-out defects"
    rows = []
    for path, name in parts:
        area, contrast = measure(path, args.ring)
        rows.append((name, area, contrast))
    by_area = {n: i + 1 for i, (n, _, _) in enumerate(sorted(rows, key=lambda r: r[1]))}
    by_contrast = {n: i + 1 for i, (n, _, _) in enumerate(sorted(rows, key=lambda r: r[2]))}
    print(f"| part | area px (rank) | contrast σ (rank) | escaped | of {len(rows)} {held}")
    print("|---|---|---|---|")
    for name, area, contrast in sorted(rows, key=lambda r: r[1]):
        print(f"| {name} | {area} ({by_area[name]}) | {contrast:.2f} ({by_contrast[name]}) | "
              f"{', '.join(escaped.get(name, []))} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
