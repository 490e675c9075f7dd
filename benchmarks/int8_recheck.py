"""INT8 with the exact re-check (issue #13): the line's verdicts of ``defectssft export --int8``
against torch's on parts never imported, and what the re-check costs.

Input: the cases ``benchmarks/decisions.py`` leaves in its ``--workdir`` (``CASE/project`` a
trained project, ``CASE/held`` parts never imported, ``CASE/held_order.json``,
``CASE/held_scores.npz``: torch's defect and anomaly scores of those parts). Per case, on a copy
of the project, as a user runs it: ``defectssft export`` (fp32) and ``defectssft export --int8``
(the default: INT8 with the re-check), both through the CLI. Then the line runtime
(``LineModel``, 1 thread, batch 1 as on a line) scores every held-out part with three models in
turn: the fp32 file, the INT8 file as exported (re-check on) and the same file with the
re-check switched off (its INT8 graph alone, what ``--no-recheck`` exports). Reported: verdict
flips against torch at the file's thresholds (the product's ``decide_part``, novelty included),
how many parts the re-check sent through fp32, and the latency per part (median and mean over
the parts, preprocessing excluded). Commands and results: BENCHMARKS.md, "INT8 fidelity".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy"), str(ROOT / "benchmarks")]
from progress import save_progress  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CASES = ["kolektor-s0", "kolektor-s1", "kolektor-s2", "elpv-mono-s0", "neu-s0"]
CLI = [sys.executable, "-m", "defectssft"]


def _export(project: Path, extra: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, "export", str(project), *extra], capture_output=True, text=True)
    said = (p.stdout + p.stderr).strip().splitlines()
    return {"rc": p.returncode, "s": time.perf_counter() - t0, "said": said[-8:]}


def _torch_verdicts(scores, anomaly, classes, ok, t, rule) -> list[str]:
    from defectssft_line.decision import decide_part

    out = []
    for s, a in zip(scores, anomaly, strict=True):
        probs = np.zeros(len(classes))
        probs[classes.index(ok)] = 1.0 - float(s)
        probs[[i for i in range(len(classes)) if classes[i] != ok][0]] = float(s)
        aa = None if rule is None else float(a)
        out.append(decide_part(probs, float(s), classes, ok, t, aa, rule).verdict)
    return out


def run_case(case: Path, work: Path) -> dict[str, Any]:
    from dataclasses import replace

    from defectssft.project import Project
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    mine = work / case.name
    if mine.exists():
        shutil.rmtree(mine)
    mine.mkdir(parents=True)
    shutil.copytree(case / "project", mine / "project")
    out: dict[str, Any] = {"case": case.name}
    out["export_fp32"] = _export(mine / "project", ["-o", str(mine / "fp32.onnx")])
    out["export_int8"] = _export(mine / "project", ["--int8", "-o", str(mine / "int8.onnx")])
    if out["export_int8"]["rc"] != 0:
        return out
    Project.open(mine / "project")  # the copy is a readable project (nothing else is needed)
    fp32 = LineModel.load(mine / "fp32.onnx", threads=1)
    guarded = LineModel.load(mine / "int8.onnx", threads=1)
    plain = LineModel.load(mine / "int8.onnx", threads=1)
    plain.recheck = None  # the INT8 graph alone
    out["margin"] = guarded.meta["recheck"]
    out["mb"] = {"fp32": (mine / "fp32.onnx").stat().st_size / 1e6,
                 "int8": (mine / "int8.onnx").stat().st_size / 1e6}  # fmt: skip
    names = json.loads((case / "held_order.json").read_text())
    scores = np.load(case / "held_scores.npz")
    rule = guarded.novelty
    if rule is not None and fp32.novelty is not None:
        rule = replace(rule, threshold=fp32.novelty.threshold)
    torch_v = _torch_verdicts(scores["torch_score"], scores["torch_anomaly"], guarded.classes,
                              guarded.ok_class, guarded.thresholds, rule)  # fmt: skip
    models = {"fp32": fp32, "int8": plain, "int8+recheck": guarded}
    verdicts: dict[str, list[str]] = {k: [] for k in models}
    ms: dict[str, list[float]] = {k: [] for k in models}
    again = []
    for _ in range(3):  # warm-up
        for m in models.values():
            m.classify_inputs(guarded.prepare(read_image(case / "held" / names[0]))[None])
    for n in names:
        x = guarded.prepare(read_image(case / "held" / n))[None]
        for k, m in models.items():
            t0 = time.perf_counter()
            pred = m.classify_inputs(x)[0]
            ms[k].append((time.perf_counter() - t0) * 1e3)
            verdicts[k].append(pred.verdict)
            if k == "int8+recheck":
                again.append(pred.rechecked)
    defective = scores["defective"].astype(bool)
    out["n"] = len(names)
    out["rechecked"] = int(np.sum(again))
    out["variants"] = {}
    for k in models:
        flips = [i for i in range(len(names)) if verdicts[k][i] != torch_v[i]]
        out["variants"][k] = {
            "flips": len(flips),
            "flipped": [f"{names[i]}: torch {torch_v[i]} vs {verdicts[k][i]}" for i in flips],
            "escapes": int(
                sum(v == "OK" for v, d in zip(verdicts[k], defective, strict=True) if d)
            ),
            "ms_median": float(np.median(ms[k])),
            "ms_mean": float(np.mean(ms[k])),
        }
    out["variants"]["torch"] = {
        "escapes": int(sum(v == "OK" for v, d in zip(torch_v, defective, strict=True) if d))
    }
    return out


def latency_at(case: Path, work: Path, size: tuple[int, int], rounds: int) -> dict[str, Any]:
    """The graphs' latency at a line's input size (batch 1, 1 thread, median of ``rounds``, run
    in turn each round): ``case``'s classifier exported at ``size`` (same weights, calibrated on
    its held parts at that size), fp32, INT8 alone, and the re-check file through each branch:
    what the ``If`` costs and what one re-checked part costs."""
    from functools import partial

    import onnx
    from int8_fidelity import classifier_at, interleaved_ms

    from defectssft import int8
    from defectssft.export import ort_session
    from defectssft_line.recheck import RECHECK_INPUT

    fp32, images = classifier_at(case, work, size)
    h, w = size
    plain, both = fp32.parent / "int8.onnx", fp32.parent / "int8-recheck.onnx"
    int8.quantize(fp32, plain, images, int8.DEFAULT)
    onnx.save(int8.with_recheck(onnx.load(str(fp32)), onnx.load(str(plain))), str(both))
    x = images[:1]
    exact = {"image": x, RECHECK_INPUT: np.array(True)}
    runs = {
        "fp32": partial(ort_session(fp32).run, None, {"image": x}),
        "int8": partial(ort_session(plain).run, None, {"image": x}),
        "recheck file, INT8 branch": partial(ort_session(both).run, None, {"image": x}),
        "recheck file, fp32 branch": partial(ort_session(both).run, None, exact),
    }
    ms = interleaved_ms(runs, rounds)
    return {"case": case.name, "size": [h, w], "ms": ms,
            "mb": {"fp32": fp32.stat().st_size / 1e6, "int8": plain.stat().st_size / 1e6,
                   "recheck": both.stat().st_size / 1e6}}  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | export --int8 | margin (logits) | re-checked held parts | flips fp32 / INT8 alone / INT8 + re-check | ms per part, median (mean): fp32 / INT8 alone / INT8 + re-check | MB fp32 / INT8 + re-check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e = r["export_int8"]
        if e["rc"] != 0:
            lines.append(f"| {r['case']} | refused: {e['said'][-1][:120]} | | | | | |")
            continue
        v = r["variants"]
        lines.append(
            f"| {r['case']} | {e['s']:.0f} s | {r['margin']['logit']:.2f} | "
            f"{r['rechecked']}/{r['n']} | {v['fp32']['flips']} / {v['int8']['flips']} / "
            f"{v['int8+recheck']['flips']} | "
            + " / ".join(
                f"{v[k]['ms_median']:.2f} ({v[k]['ms_mean']:.2f})"
                for k in ("fp32", "int8", "int8+recheck")
            )
            + f" | {r['mb']['fp32']:.1f} / {r['mb']['int8']:.1f} |"
        )
    ok = [r for r in results if r["export_int8"]["rc"] == 0]
    if ok:
        tot = {
            k: sum(r["variants"][k]["flips"] for r in ok) for k in ("fp32", "int8", "int8+recheck")
        }
        n = sum(r["n"] for r in ok)
        lines.append(
            f"| all | {len(ok)} of {len(results)} exported | | "
            f"{sum(r['rechecked'] for r in ok)}/{n} | {tot['fp32']} / {tot['int8']} / "
            f"{tot['int8+recheck']} of {n} | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from int8_fidelity import case_arguments

    ap = case_arguments(
        "int8_recheck",
        200,
        "only time the first case's graphs exported at H x W (a line's input size)",
    )
    ap.description = __doc__.split("\n")[0]
    args = ap.parse_args(argv)
    if args.latency_size:
        at = latency_at(args.bench / args.cases[0], args.workdir, tuple(args.latency_size),
                        args.rounds)  # fmt: skip
        (RESULTS / f"{args.name}.json").write_text(json.dumps(at, indent=1))
        print(json.dumps(at, indent=1))
        return 0
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in args.cases:
        results.append(run_case(args.bench / name, args.workdir))
        save_progress(RESULTS / args.name, "int8_recheck", t0, results, table(results))
        print(table(results[-1:]), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
