"""INT8 fidelity (issues #13, #16): how far the INT8 file's logits and verdicts are from torch's,
per INT8 recipe (``defectssft.int8.RECIPES``), on trained projects and their held-out parts.

Input: the cases ``benchmarks/decisions.py`` leaves in its ``--workdir`` (``CASE/project`` a
trained project, ``CASE/held`` parts never imported, ``CASE/held_order.json``). Each project is
copied first (nothing is written into the originals). Per case: the version's fp32 graph as the
export builds it (with its anomaly head), then one INT8 file per recipe through
``defectssft.int8.quantize`` on the export's own calibration images (``export._project_images``);
onnxruntime (1 thread) scores the held-out parts and the export's own check images
(``exportcheck.verdict_images``: val, test and a stream sample). Reported per variant: max
|logit - torch logit|, verdict flips at the version's operating point (the product's
``decision.decide`` / ``decide_part`` with the novelty rule), the anomaly score's largest change
(of its threshold), the latency (batch 1, 1 thread, median of ``--rounds``, all variants
interleaved with fp32) and the file size. Commands and results: BENCHMARKS.md, "INT8 fidelity".
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def _outputs(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    from defectssft.export import ort_session

    session = ort_session(path)
    names = [
        o.name
        for o in session.get_outputs()
        if o.name in ("probs", "logits", "defect_score", "anomaly_score")
    ]
    got = [session.run(names, {"image": images[i : i + 16]}) for i in range(0, len(images), 16)]
    return {n: np.concatenate([g[k] for g in got]) for k, n in enumerate(names)}


def _verdicts(out: dict[str, np.ndarray], classes, ok, t, rule) -> tuple[list[str], list[str]]:
    """(classifier verdicts, line verdicts with the novelty rule) per image."""
    from defectssft_line.decision import decide, decide_part

    plain = [
        decide(p, float(s), classes, ok, t).verdict
        for p, s in zip(out["probs"], out["defect_score"], strict=True)
    ]
    if rule is None or "anomaly_score" not in out:
        return plain, plain
    line = [
        decide_part(p, float(s), classes, ok, t, float(a), rule).verdict
        for p, s, a in zip(out["probs"], out["defect_score"], out["anomaly_score"], strict=True)
    ]
    return plain, line


def interleaved_ms(runs: dict[str, Any], rounds: int, warmup: int = 5) -> dict[str, float]:
    """Median ms of each callable in ``runs``, all run in turn each round (after ``warmup``
    rounds), so a change of machine load weighs on every variant alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def _latency(paths: dict[str, Path], image: np.ndarray, rounds: int) -> dict[str, float]:
    """Median ms per part (batch 1, 1 thread), the variants run in turn each round."""
    from functools import partial

    from defectssft.export import ort_session

    runs = {k: partial(ort_session(p).run, None, {"image": image}) for k, p in paths.items()}
    return interleaved_ms(runs, rounds)


def run_case(case: Path, work: Path, recipes: list[str], rounds: int) -> dict[str, Any]:
    import onnx
    import torch

    from defectssft import int8
    from defectssft.anomaly import export_graph, load_anomaly, torch_anomaly
    from defectssft.calibration import logit
    from defectssft.export import _project_images, _torch_to_onnx
    from defectssft.exportcheck import verdict_images
    from defectssft.inspection import ModelSpec, inspection_model, load_images
    from defectssft.modeling import load_model_file
    from defectssft.project import Project
    from defectssft_line.novelty import NoveltyRule

    torch.set_num_threads(1)
    mine = work / case.name
    if mine.exists():
        shutil.rmtree(mine)
    mine.mkdir(parents=True)
    shutil.copytree(case / "project", mine / "project")
    project = Project.open(mine / "project")
    record = project.get_model(None)
    model, meta = load_model_file(Path(record["path"]) / "model.pt")
    meta["version"] = meta.get("version") or record["version"]
    spec = ModelSpec.from_meta(meta)
    t = spec.resolve_thresholds(record.get("metrics"))
    inp = spec.input
    _, _, calib_paths = _project_images(project, 32, 64)
    calib = load_images(calib_paths, inp.height, inp.width, inp.bit_depth, inp.roi)
    held_names = json.loads((case / "held_order.json").read_text())
    held = load_images(
        [case / "held" / n for n in held_names], inp.height, inp.width, inp.bit_depth, inp.roi
    )
    _, check_paths, _ = verdict_images(project)
    check = load_images(check_paths, inp.height, inp.width, inp.bit_depth, inp.roi)

    wrapper = inspection_model(model, spec)
    head = load_anomaly(Path(record["path"]))
    metadata = spec.onnx_metadata(t, "fp32", project.name)
    graph = export_graph(wrapper, head, True, metadata)
    fp32 = mine / "fp32.onnx"
    onnx.save(_torch_to_onnx(graph or wrapper, inp.height, inp.width), str(fp32))
    classes, ok = list(spec.classes), spec.ok_class if spec.ok_class in spec.classes else None
    rule = None if head is None else NoveltyRule(float(head.threshold), str(head.on_novel))

    def torch_out(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            parts = [
                wrapper(torch.from_numpy(images[i : i + 16])) for i in range(0, len(images), 16)
            ]
        out = {
            n: np.concatenate([p[k].numpy() for p in parts])
            for k, n in enumerate(("probs", "logits", "defect_score"))
        }
        if graph is not None:
            g = head.wrap(wrapper)
            g.with_map = False
            out["anomaly_score"] = torch_anomaly(g, images)[0]
        return out

    sets = {"held": held, "check": check}
    reference = {k: torch_out(v) for k, v in sets.items()}
    ref_verdicts = {k: _verdicts(v, classes, ok, t, rule) for k, v in reference.items()}
    files = {"fp32": fp32}
    excluded: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for name in recipes:
        out = mine / f"int8-{name}.onnx"
        t0 = time.perf_counter()
        excluded[name] = len(int8.quantize(fp32, out, calib, int8.recipe(name)))
        seconds[name] = time.perf_counter() - t0
        print(f"  {case.name}: {name} quantized in {seconds[name]:.0f} s", flush=True)
        files[name] = out
    latency = _latency(files, held[:1], rounds)
    variants: dict[str, Any] = {}
    for name, path in files.items():
        v: dict[str, Any] = {
            "ms": latency[name],
            "mb": path.stat().st_size / 1e6,
            "float_nodes": excluded.get(name),
            "quantize_s": seconds.get(name),
        }
        for k, images in sets.items():
            got = _outputs(path, images)
            ref = reference[k]
            plain, line = _verdicts(got, classes, ok, t, rule)
            dscore = np.abs(
                logit(got["defect_score"].astype(np.float64))
                - logit(ref["defect_score"].astype(np.float64))
            )
            v[k] = {
                "n": len(images),
                "max_dlogit": float(np.max(np.abs(got["logits"] - ref["logits"]))),
                "median_dlogit": float(
                    np.median(np.abs(got["logits"] - ref["logits"]).max(axis=1))
                ),
                "max_dscore_logit": float(dscore.max()),
                # common shift vs part-to-part spread of the error, per class logit
                "dlogit_mean": (got["logits"] - ref["logits"]).mean(axis=0).tolist(),
                "dlogit_std": (got["logits"] - ref["logits"]).std(axis=0).tolist(),
                "flips": int(sum(a != b for a, b in zip(plain, ref_verdicts[k][0], strict=True))),
                "line_flips": int(
                    sum(a != b for a, b in zip(line, ref_verdicts[k][1], strict=True))
                ),
            }
            if ok is not None and len(classes) == 2:
                # margin = logit(defect) - logit(OK): what the verdict reads
                sign = np.where(np.arange(2) == classes.index(ok), -1.0, 1.0)
                dm = (got["logits"] - ref["logits"]) @ sign
                v[k]["dmargin_mean"] = float(dm.mean())
                v[k]["dmargin_std"] = float(dm.std())
                v[k]["dmargin_median_abs"] = float(np.median(np.abs(dm)))
            if "anomaly_score" in got:
                d = np.abs(got["anomaly_score"] - ref["anomaly_score"])
                v[k]["anomaly_max_rel"] = float(d.max() / max(abs(float(head.threshold)), 1e-9))
                v[k]["anomaly_shift_rel"] = float(
                    np.median(got["anomaly_score"] - ref["anomaly_score"])
                    / max(abs(float(head.threshold)), 1e-9)
                )
        variants[name] = v
    return {
        "case": case.name,
        "thresholds": t.as_dict(),
        "anomaly_threshold": None if head is None else float(head.threshold),
        "n_calib": len(calib),
        "input": [inp.height, inp.width],
        "variants": variants,
    }


def classifier_at(case: Path, work: Path, size: tuple[int, int]) -> tuple[Path, np.ndarray]:
    """``case``'s classifier exported fp32 at ``size`` (same weights) into a folder of ``work``,
    and up to 64 of its held parts at that size (to calibrate and time on)."""
    import onnx
    import torch

    from defectssft.export import _torch_to_onnx
    from defectssft.inspection import ModelSpec, inspection_model, load_images
    from defectssft.modeling import load_model_file

    torch.set_num_threads(1)
    model, meta = load_model_file(case / "project" / "models" / "v0001" / "model.pt")
    spec = ModelSpec.from_meta(meta)
    h, w = size
    mine = work / f"{case.name}-{h}x{w}"
    mine.mkdir(parents=True, exist_ok=True)
    fp32 = mine / "fp32.onnx"
    onnx.save(_torch_to_onnx(inspection_model(model, spec), h, w), str(fp32))
    names = json.loads((case / "held_order.json").read_text())[:64]
    return fp32, load_images([case / "held" / n for n in names], h, w, spec.input.bit_depth)


def latency_at(case: Path, work: Path, recipes: list[str], size: tuple[int, int], rounds: int):
    """fp32 and each recipe's latency (batch 1, 1 thread, interleaved) of ``case``'s classifier
    exported at ``size`` (the weights are the same; calibrated on its held parts at that size):
    what the recipe costs at a line's input size, where the early layers weigh more."""
    from defectssft import int8

    fp32, images = classifier_at(case, work, size)
    mine, (h, w) = fp32.parent, size
    files = {"fp32": fp32}
    seconds = {}
    for name in recipes:
        files[name] = mine / f"int8-{name}.onnx"
        t0 = time.perf_counter()
        int8.quantize(fp32, files[name], images, int8.recipe(name))
        seconds[name] = time.perf_counter() - t0
    ms = _latency(files, images[:1], rounds)
    return {
        "case": case.name,
        "size": [h, w],
        "ms": ms,
        "quantize_s": seconds,
        "ratio": {k: v / ms["fp32"] for k, v in ms.items()},
        "mb": {k: p.stat().st_size / 1e6 for k, p in files.items()},
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | variant | max abs dlogit held / check | flips held / check (line: with novelty) | anomaly max change of thr | ms (1 thread) | vs fp32 | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fp = r["variants"]["fp32"]["ms"]
        for name, v in r["variants"].items():
            h, c = v["held"], v["check"]
            an = (
                f"{h['anomaly_max_rel']:.1%} / {c['anomaly_max_rel']:.1%}"
                if "anomaly_max_rel" in h
                else ""
            )
            lines.append(
                f"| {r['case']} | {name} | {h['max_dlogit']:.2f} / {c['max_dlogit']:.2f} | "
                f"{h['flips']}/{h['n']} / {c['flips']}/{c['n']} ({h['line_flips']} / {c['line_flips']}) | {an} | "
                f"{v['ms']:.2f} | {v['ms'] / fp:.2f} | {v['mb']:.1f} |"
            )
    names = list(results[0]["variants"]) if results else []
    lines += [
        "",
        "| variant (all cases) | flips held | flips check | line flips held + check | worst max abs dlogit | latency vs fp32 (median over cases) |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        vs = [r["variants"][name] for r in results]
        lines.append(
            f"| {name} | {sum(v['held']['flips'] for v in vs)}/{sum(v['held']['n'] for v in vs)} | "
            f"{sum(v['check']['flips'] for v in vs)}/{sum(v['check']['n'] for v in vs)} | "
            f"{sum(v['held']['line_flips'] + v['check']['line_flips'] for v in vs)} | "
            f"{max(max(v['held']['max_dlogit'], v['check']['max_dlogit']) for v in vs):.2f} | "
            f"{np.median([v['ms'] / r['variants']['fp32']['ms'] for v, r in zip(vs, results, strict=True)]):.2f} |"
        )
    return "\n".join(lines) + "\n"


def case_arguments(name: str, rounds: int, latency_help: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark over ``decisions.py``'s trained cases (this one and
    ``int8_recheck.py``): --bench, --cases, --workdir, --name, --rounds, --latency-size."""
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--bench", type=Path, default=Path("/tmp/h13_bench"), help="decisions.py's --workdir"
    )
    ap.add_argument("--cases", nargs="+", default=CASES)
    ap.add_argument("--workdir", type=Path, default=Path(f"/tmp/{name}"))
    ap.add_argument("--name", default=name)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--latency-size", type=int, nargs=2, metavar=("H", "W"), help=latency_help)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = case_arguments(
        "int8_fidelity",
        300,
        "also time the first case's classifier exported at H x W (a line's input size)",
    )
    ap.description = __doc__.split("\n")[0]
    ap.add_argument(
        "--recipes", nargs="+", default=None, help="defectssft.int8.RECIPES names (default: all)"
    )
    args = ap.parse_args(argv)
    from defectssft import int8

    recipes = args.recipes or list(int8.RECIPES)
    for name in recipes:
        try:
            int8.recipe(name)  # an unknown name: one line before any work
        except int8.Int8Error as e:
            ap.error(str(e))
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    stem = RESULTS / args.name
    for name in args.cases:
        results.append(run_case(args.bench / name, args.workdir, recipes, args.rounds))
        payload = save_progress(stem, "int8_fidelity", t0, results, table(results))
        print(table(results[-1:]), flush=True)
    if args.latency_size:
        at = latency_at(
            args.bench / args.cases[0], args.workdir, recipes, tuple(args.latency_size), args.rounds
        )
        payload["latency_at_size"] = at
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
        line = " | ".join(f"{k} {v:.2f} ms ({at['ratio'][k]:.2f})" for k, v in at["ms"].items())
        with stem.with_suffix(".md").open("a") as f:
            f.write(
                f"\nLatency at {at['size'][0]}x{at['size'][1]} ({at['case']}, classifier only): {line}\n"
            )
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
