"""The product's default path, run as a new user would, scored on parts it never saw.

For each data set (NEU-DET as an imbalanced line, KolektorSDD, ELPV mono and poly), each number
of labels per defect type ``k`` and each seed, this builds a project in a temporary folder with
the CLIs alone (``defectssft init``, ``import`` of the labeled images and of the unlabeled
stream, ``train`` with no options, ``status``, ``evaluate``, ``export``, ``promote``) and scores
**the line runtime's** verdicts (``defectssft-line run`` on a folder of held-out parts that were
never imported) against the truth. Beside the default it trains, in the same project, the
supervised-only baseline on the same labels (``--set ssl.method=supervised``) and, in a second
project holding every non-held-out label, the ceiling (same backbone, supervised, all labels).

Everything runs through the CLIs as subprocesses; nothing of the training internals is imported,
so the suite keeps measuring whatever the default path is. ``--quick`` and ``--smoke`` are the
only modes that pass ``--set`` settings to the default arm (fewer steps, small input), and they
say so in their results. Protocols, commands and results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("DEFECTSSFT_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS = ROOT / "benchmarks" / "results"
DATASET_NAMES = ("neu", "kolektor", "elpv-mono", "elpv-poly")
ARMS = ("default", "supervised", "ceiling")
OK = "good"  # the OK class's name in every project the suite builds

# Protocol constants (BENCHMARKS.md states them): OK labels a user gives, the stream's defect rate.
MIN_OK_LABELS = 20  # OK labels = max(20, number of defect labels)
STREAM_DEFECT_RATE = 0.04  # unlabeled stream: ~4 % defective parts
NEU_GOOD = "rolled-in_scale"  # the NEU-DET class that plays the good parts


@dataclass
class Part:
    """One image with its truth: class name, defective or not, ELPV grade for graded cells."""

    path: Path
    cls: str
    defective: bool
    grade: str | None = None  # "0.33" / "0.67" for ELPV's uncertain cells (scored apart)


@dataclass
class Protocol:
    """What one run imports, what it keeps out, and what the ceiling project gets."""

    name: str
    classes: list[str]  # OK class first
    labeled: dict[str, list[Path]]
    stream: list[Part]
    held: list[Part]
    all_labels: dict[str, list[Path]]  # every non-held-out image with its label (ceiling)
    notes: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data sets


def _dedup(paths: list[Path]) -> list[Path]:
    """Drop byte-identical files (the project stores a duplicate once, so it would vanish)."""
    seen, out = set(), []
    for p in sorted(paths):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(p)
    return out


def neu_pool(root: Path) -> dict[str, list[Path]]:
    """NEU-DET by class, ``NEU_GOOD`` renamed to the OK class."""
    by: dict[str, list[Path]] = defaultdict(list)
    for p in _dedup(list((root / "images").glob("*.jpg"))):
        m = re.match(r"(.+)_\d+\.jpg$", p.name)
        if m:
            by[OK if m.group(1) == NEU_GOOD else m.group(1)].append(p)
    if OK not in by:
        raise SystemExit(f"no NEU-DET images of {NEU_GOOD!r} under {root}/images")
    return dict(by)


def kolektor_pool(root: Path) -> dict[str, list[Path]]:
    """KolektorSDD: an empty YOLO label file is a good part, a non-empty one a defect."""
    by: dict[str, list[Path]] = defaultdict(list)
    for img in sorted((root / "images").glob("*/*.jpg")):
        lab = root / "labels" / img.parent.name / f"{img.stem}.txt"
        if lab.exists():
            by["defect" if lab.read_text().strip() else OK].append(img)
    if not by:
        raise SystemExit(f"no KolektorSDD images under {root}/images")
    return dict(by)


def samples_pool(root: Path) -> dict[str, list[Path]]:
    """samples/kolektorsdd (good/ and defective/), for --smoke."""
    by = {
        OK: sorted((root / "good").glob("*.jpg")),
        "defect": sorted((root / "defective").glob("*.jpg")),
    }
    if not by[OK] or not by["defect"]:
        raise SystemExit(f"no sample images under {root}/good and {root}/defective")
    return by


def elpv_pool(root: Path, kind: str) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """ELPV cells of one type: 0.0 = good, 1.0 = defect; the graded 0.33/0.67 cells apart."""
    by: dict[str, list[Path]] = defaultdict(list)
    graded: dict[str, list[Path]] = defaultdict(list)
    for line in (root / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[2] != kind:
            continue
        prob, path = float(parts[1]), root / parts[0]
        if prob == 0.0:
            by[OK].append(path)
        elif prob == 1.0:
            by["defect"].append(path)
        else:
            graded[f"{prob:.2f}"].append(path)
    if not by:
        raise SystemExit(f"no ELPV {kind} cells in {root}/labels.csv")
    return dict(by), dict(graded)


def build_protocol(
    name: str,
    pool: dict[str, list[Path]],
    held_n: dict[str, int],
    k: int,
    seed: int,
    *,
    min_ok_labels: int = MIN_OK_LABELS,
    stream_max: int = 400,
    graded: dict[str, list[Path]] | None = None,
    graded_n: int = 0,
) -> Protocol:
    """Held-out parts fixed per data set (not per seed); labels and stream drawn with ``seed``.

    ``k`` labels per defect type, ``max(min_ok_labels, defect labels)`` OK labels; the stream is
    the remaining good parts (at most ``stream_max``) plus defects at ``STREAM_DEFECT_RATE``.
    """
    held: list[Part] = []
    rest: dict[str, list[Path]] = {}
    for c in sorted(pool):
        paths = sorted(pool[c])
        random.Random(f"{name}-held-{c}").shuffle(paths)
        n = held_n.get(c, 0)
        held += [Part(p, c, c != OK) for p in paths[:n]]
        rest[c] = paths[n:]
    for grade, paths in sorted((graded or {}).items()):
        paths = sorted(paths)
        random.Random(f"{name}-held-{grade}").shuffle(paths)
        held += [Part(p, f"graded-{grade}", False, grade) for p in paths[:graded_n]]
    rng = random.Random(f"{name}-labels-{seed}")
    defects = [c for c in sorted(pool) if c != OK]
    labeled: dict[str, list[Path]] = {}
    spare: list[Part] = []
    for c in defects:
        r = list(rest[c])
        rng.shuffle(r)
        if len(r) < k:
            raise SystemExit(f"{name}: only {len(r)} {c} images outside the held-out parts")
        labeled[c] = r[:k]
        spare += [Part(p, c, True) for p in r[k:]]
    ok_rest = list(rest[OK])
    rng.shuffle(ok_rest)
    n_ok = max(min_ok_labels, k * len(defects))
    labeled = {OK: ok_rest[:n_ok], **labeled}
    stream = [Part(p, OK, False) for p in ok_rest[n_ok : n_ok + stream_max]]
    n_def = min(len(spare), round(STREAM_DEFECT_RATE * len(stream) / (1 - STREAM_DEFECT_RATE)))
    rng.shuffle(spare)
    stream += spare[:n_def]
    return Protocol(
        name=name,
        classes=[OK, *defects],
        labeled=labeled,
        stream=stream,
        held=held,
        all_labels=rest,
        notes={
            "labeled": {c: len(v) for c, v in labeled.items()},
            "stream": len(stream),
            "stream_defects": n_def,
            "held": dict(Counter(p.cls for p in held)),
        },
    )


def protocol(dataset: str, k: int, seed: int, mode: str, root: Path) -> Protocol:
    """The protocol of one data set in one mode (full / quick / smoke)."""
    small = mode != "full"  # fewer held-out parts in quick mode
    if dataset == "samples":
        pool = samples_pool(root)
        return build_protocol(
            "samples", pool, {OK: 3, "defect": 2}, k, seed, min_ok_labels=3, stream_max=10
        )
    if dataset == "neu":
        pool = neu_pool(root / "neu-det")
        held = {c: (50 if small else 100) if c == OK else (10 if small else 20) for c in pool}
        return build_protocol("neu", pool, held, k, seed)
    if dataset == "kolektor":
        pool = kolektor_pool(root / "kolektorsdd")
        held = {OK: 60 if small else 120, "defect": 16 if small else 22}
        return build_protocol("kolektor", pool, held, k, seed)
    if dataset in ("elpv-mono", "elpv-poly"):
        pool, graded = elpv_pool(root / "elpv", dataset.split("-")[1])
        held = {OK: 60 if small else 150, "defect": 30 if small else 60}
        return build_protocol(
            dataset, pool, held, k, seed, graded=graded, graded_n=10 if small else 30
        )
    raise SystemExit(f"unknown data set {dataset!r}; choose from {', '.join(DATASET_NAMES)}")


# --------------------------------------------------------------------------- statistics


def wilson(x: int, n: int, z: float = 1.959964) -> list[float] | None:
    """95 % Wilson score interval of x successes in n trials (None for n = 0)."""
    if n == 0:
        return None
    p = x / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


def rate(x: int, n: int) -> dict[str, Any]:
    return {"x": x, "n": n, "rate": None if n == 0 else round(x / n, 4), "ci95": wilson(x, n)}


def score_verdicts(held: list[Part], records: list[dict]) -> dict[str, Any]:
    """Line verdicts against the truth. UNSURE counts as neither OK nor NG (wrong for balanced
    accuracy on both sides); escapes = defective parts verdict OK; overkill = good parts NG."""
    by_name = {Path(r["file"]).name: r for r in records}
    graded: dict[str, Counter] = defaultdict(Counter)
    good, bad, classes = Counter(), Counter(), defaultdict(Counter)
    scores: dict[bool, list[float]] = {True: [], False: []}
    missing = 0
    for part in held:
        r = by_name.get(_held_name(part))
        if r is None:
            missing += 1
            continue
        v = r["verdict"]
        if part.grade:
            graded[part.grade][v] += 1
            continue
        (bad if part.defective else good)[v] += 1
        if isinstance(r.get("score"), int | float):
            scores[part.defective].append(float(r["score"]))
        classes[part.cls]["right" if r.get("class") == part.cls else "wrong"] += 1
    n_good, n_bad = sum(good.values()), sum(bad.values())
    n = n_good + n_bad
    ok_recall = good["OK"] / n_good if n_good else 0.0
    ng_recall = bad["NG"] / n_bad if n_bad else 0.0
    out: dict[str, Any] = {
        "n": n,
        "n_good": n_good,
        "n_defective": n_bad,
        "balanced_accuracy": round((ok_recall + ng_recall) / 2, 4),
        "escapes": rate(bad["OK"], n_bad),
        "overkill": rate(good["NG"], n_good),
        "unsure": rate(good["UNSURE"] + bad["UNSURE"], n),
        "errors": good["ERROR"] + bad["ERROR"],
        "missing": missing,
        "verdicts": {"good": dict(good), "defective": dict(bad)},
        "auroc": auroc(scores[False], scores[True]),
    }
    if len(classes) > 2:  # multi-class: the line's top class against the true class
        recalls = [c["right"] / (c["right"] + c["wrong"]) for c in classes.values()]
        out["balanced_accuracy_class"] = round(sum(recalls) / len(recalls), 4)
        out["class_recall"] = {
            k: round(c["right"] / (c["right"] + c["wrong"]), 4) for k, c in sorted(classes.items())
        }
    if graded:
        out["graded_verdicts"] = {g: dict(c) for g, c in sorted(graded.items())}
    return out


def auroc(good: list[float], bad: list[float]) -> float | None:
    """Threshold-free: the chance a defective part scores above a good one (ties count half);
    None without both kinds of part."""
    if not good or not bad:
        return None
    above = sum((b > g) + 0.5 * (b == g) for b in bad for g in good)
    return round(above / (len(good) * len(bad)), 4)


_PCT = r"([0-9.]+|n/a)\s*%?"


def _rate_claim(text: str, where: str, name: str) -> dict[str, Any] | None:
    """One rate as ``evaluate`` prints it (``metrics.format_rate``): ``escapes 0 / 3, ≤ 70.8 %``
    or ``escapes 2 / 40 = 5.0 % [0.6, 16.9]``, on the line that starts with ``where``: its count,
    parts and the product's own 95 % interval (fractions)."""
    line = re.search(rf"^\s*{where}[^\n]*$", text, re.M)
    if not line:
        return None
    m = re.search(
        rf"{name} (\d+) / (\d+)(?:, ≤ ([0-9.]+) %| = [0-9.]+ % \[([0-9.]+), ([0-9.]+)\])?",
        line.group(0),
    )
    if not m:
        return None
    k, n = int(m.group(1)), int(m.group(2))
    if not n:
        return {"k": k, "n": n, "low": 0.0, "high": 1.0}
    if m.group(3) is not None:
        return {"k": k, "n": n, "low": 0.0, "high": float(m.group(3)) / 100}
    return {"k": k, "n": n, "low": float(m.group(4)) / 100, "high": float(m.group(5)) / 100}


def parse_evaluate(text: str) -> dict[str, Any]:
    """What ``defectssft evaluate`` claimed, parsed from its printout (raw text kept too)."""

    def num(pattern: str) -> float | None:
        m = re.search(pattern, text)
        if not m or m.group(1) == "n/a":
            return None
        return float(m.group(1))

    claims = {
        "n": num(r"test split \((\d+) images?\)"),
        "accuracy_pct": num(r"accuracy " + _PCT),
        "roc_auc": num(r"ROC AUC ([0-9.]+|n/a)"),
        "threshold": num(r"operating threshold ([0-9.eE+-]+)"),
        "escape_pct": num(r"operating threshold [^:]*: escape " + _PCT),
        "overkill_pct": num(r"operating threshold [^\n]*overkill " + _PCT),
    }
    for key, where in (("test", r"line verdicts on test:"), ("oof", r"out-of-fold \(")):
        for name in ("escapes", "overkill", "UNSURE"):
            claims[f"{key}_{name.lower()}"] = _rate_claim(text, where, name)
    esc = claims["test_escapes"]
    if claims["escape_pct"] is None and esc and esc["n"]:
        claims["escape_pct"] = 100.0 * esc["k"] / esc["n"]
    sup = re.findall(r"^\s+(\S+)\s+P [0-9.]+\s+R [0-9.]+\s+F1 [0-9.]+\s+n (\d+)", text, re.M)
    claims["test_support"] = {c: int(n) for c, n in sup}
    claims["n_defective"] = sum(n for c, n in claims["test_support"].items() if c != OK) or None
    m = re.search(r"out-of-fold \((\d+) labeled images?\)", text)
    claims["oof_n"] = int(m.group(1)) if m else None
    m = re.search(r"operating threshold [^(\n]*\(from ([a-z+ ]+)[;)]", text)
    claims["chosen_on"] = m.group(1).strip() if m else None
    m = re.search(r"UNSURE band \[([0-9.eE+-]+), ([0-9.eE+-]+)\)", text)
    claims["unsure_band"] = [float(m.group(1)), float(m.group(2))] if m else None
    m = re.search(
        r"unlabeled stream \((\d+) scored\): to review \(UNSURE\) (\d+) / \d+[^;]*; "
        r"rejected \(NG\) (\d+) / \d+",
        text,
    )
    if m:  # counts with intervals (evaluate since issue #13's audit)
        n = int(m.group(1))
        claims["stream"] = {
            "n": n,
            "review_pct": round(100.0 * int(m.group(2)) / n, 2),
            "reject_pct": round(100.0 * int(m.group(3)) / n, 2),
        }
    else:  # the older printout: percentages only
        m = re.search(
            r"unlabeled stream \((\d+) scored\): ([0-9.]+)% to review[^,]*, ([0-9.]+)% rejected",
            text,
        )
        claims["stream"] = (
            {"n": int(m.group(1)), "review_pct": float(m.group(2)), "reject_pct": float(m.group(3))}
            if m
            else None
        )
    claims["warnings"] = re.findall(r"^warning: (.+)$", text, re.M)
    return claims


RATES = ("escapes", "overkill", "unsure")


def coverage(claims: dict[str, Any], line: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Whether the product's own 95 % intervals (``evaluate``'s test split and out-of-fold
    claims) hold the rates the line showed on the held-out parts: ``{source: {rate: {"k", "n",
    "low", "high", "line", "holds"}}}``, for every claim with parts behind it."""
    out: dict[str, dict[str, Any]] = {}
    for where in ("test", "oof"):
        for name in RATES:
            c = claims.get(f"{where}_{name}")
            if not c or not c["n"] or line[name]["rate"] is None:
                continue
            seen = line[name]["rate"]
            holds = c["low"] - 1e-9 <= seen <= c["high"] + 1e-9
            out.setdefault(where, {})[name] = {**c, "line": seen, "holds": holds}
    return out


# --------------------------------------------------------------------------- running the CLIs


class Runner:
    """Runs CLI commands as subprocesses, logs each (command, seconds, exit code, output)."""

    def __init__(self, log: Path, threads: int):
        self.log = log
        self.env = dict(os.environ)
        self.env.setdefault("QT_QPA_PLATFORM", "offscreen")
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            self.env[var] = str(threads)
        paths = [str(ROOT), str(ROOT / "deploy")]
        if self.env.get("PYTHONPATH"):
            paths.append(self.env["PYTHONPATH"])
        self.env["PYTHONPATH"] = os.pathsep.join(paths)
        self.commands: list[dict[str, Any]] = []

    def __call__(self, tool: str, *args: str | Path, check: bool = True) -> tuple[int, str]:
        module = {"defectssft": "defectssft", "defectssft-line": "defectssft_line.cli"}[tool]
        cmd = [sys.executable, "-m", module, *map(str, args)]
        shown = " ".join([tool, *map(str, args)])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        secs = time.perf_counter() - t0
        out = proc.stdout + proc.stderr
        self.commands.append({"cmd": shown, "seconds": round(secs, 1), "rc": proc.returncode})
        with self.log.open("a") as f:
            f.write(f"$ {shown}\n# rc {proc.returncode}, {secs:.1f} s\n{out}\n")
        if check and proc.returncode != 0:
            tail = out.strip().splitlines()[-3:]
            raise RuntimeError(f"{shown} failed (rc {proc.returncode}): {' | '.join(tail)}")
        return proc.returncode, out


def _held_name(part: Part) -> str:
    """A unique file name for a held-out part (KolektorSDD repeats names across folders)."""
    return f"{part.path.parent.name}__{part.path.name}"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, dst)


def stage(proto: Protocol, work: Path) -> dict[str, Path]:
    """Folders a user would import from: labeled/<class>/, stream/, held/ (never imported)."""
    dirs = {n: work / n for n in ("labeled", "stream", "held", "all_labels")}
    for c, paths in proto.labeled.items():
        for p in paths:
            _link(p, dirs["labeled"] / c / f"{p.parent.name}__{p.name}")
    for part in proto.stream:
        _link(part.path, dirs["stream"] / f"{part.path.parent.name}__{part.path.name}")
    for part in proto.held:
        _link(part.path, dirs["held"] / _held_name(part))
    for c, paths in proto.all_labels.items():
        for p in paths:
            _link(p, dirs["all_labels"] / c / f"{p.parent.name}__{p.name}")
    return dirs


def _newest_version(project: Path) -> str:
    versions = sorted(p.name for p in (project / "models").glob("v[0-9]*") if p.is_dir())
    if not versions:
        raise RuntimeError(f"no model version in {project}/models after training")
    return versions[-1]


def run_arm(
    run: Runner,
    project: Path,
    arm: str,
    train_sets: list[str],
    held: list[Part],
    held_dir: Path,
    out_dir: Path,
    promote: bool,
) -> dict[str, Any]:
    """train → evaluate → export (→ promote) → line run on held-out parts, scored."""
    t0 = time.perf_counter()
    n_cmd = len(run.commands)
    sets = [a for s in train_sets for a in ("--set", s)]
    _, train_out = run("defectssft", "train", project, *sets)
    version = _newest_version(project)
    _, status = run("defectssft", "status", project, "--json")
    # A user whose test split is empty (fewer than 3 labels in a class) gets an error here and
    # goes on to export; the suite records the refusal as the product's claim and does the same.
    ev_rc, ev = run("defectssft", "evaluate", project, "--model", version, check=False)
    _, ex = run("defectssft", "export", project, "--model", version)
    model = project / "models" / version / "model.onnx"
    promoted = None
    if promote:
        rc, pr = run("defectssft", "promote", project, version, check=False)
        promoted = {"rc": rc, "said": pr.strip().splitlines()[-1] if pr.strip() else ""}
        if rc == 0 and (project / "exports" / "production.onnx").exists():
            model = project / "exports" / "production.onnx"
    if not model.exists():
        found = sorted((project / "models" / version).glob("*.onnx"))
        if not found:
            raise RuntimeError(f"export wrote no .onnx under {project}/models/{version}")
        model = found[0]
    verdicts = out_dir / f"{arm}.jsonl"
    verdicts.unlink(missing_ok=True)
    run(
        "defectssft-line",
        "run",
        "--model",
        model,
        "--input",
        held_dir,
        "--format",
        "jsonl",
        "--output",
        verdicts,
        "--threads",
        "1",
    )
    records = [json.loads(x) for x in verdicts.read_text().splitlines() if x.strip()]
    thr = re.search(
        r"thresholds: ng ([0-9.eE+-]+), unsure band \[([0-9.eE+-]+), ([0-9.eE+-]+)\)", ex
    )
    try:
        splits = _split_counts(json.loads(status))
    except ValueError:
        splits = None
    claims = parse_evaluate(ev) if ev_rc == 0 else {"refused": ev.strip().splitlines()[-1]}
    line = score_verdicts(held, records)
    return {
        "version": version,
        "train_sets": train_sets,
        "model_file": model.name,
        "promote": promoted,
        "exported_thresholds": (
            {"ng": float(thr[1]), "unsure_low": float(thr[2]), "unsure_high": float(thr[3])}
            if thr
            else None
        ),
        "train_said": _train_said(train_out),
        "splits": splits,
        "checkpoint": checkpoint_choice(project, version),
        "claims": claims,
        "evaluate_printed": ev.strip().split("\n\n")[0],
        "line": line,
        "coverage": {} if "refused" in claims else coverage(claims, line),
        "seconds": round(time.perf_counter() - t0, 1),
        "commands": run.commands[n_cmd:],
    }


_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) ")


def _train_said(out: str) -> list[str]:
    """What ``train`` printed about its decisions: the lines from ``model vNNNN`` on (else the
    last three lines)."""
    lines = [x for x in out.strip().splitlines() if x.strip() and not _LOG_LINE.match(x)]
    starts = [i for i, x in enumerate(lines) if re.match(r"^model v\d+$", x)]
    return lines[starts[-1] :] if starts else lines[-3:]


def checkpoint_choice(project: Path, version: str) -> dict[str, Any] | None:
    """Which step's weights the version ships, from the run's JSON-lines log (``metrics.jsonl``):
    the last evaluation marked best, every validation evaluation, and the final step."""
    log = project / "models" / version / "metrics.jsonl"
    if not log.exists():
        return None
    evals, final = [], None
    for text in log.read_text().splitlines():
        try:
            ev = json.loads(text)
        except ValueError:
            continue
        if ev.get("event") == "eval":
            keep = ("step", "best", "balanced_accuracy", "auroc", "nll")
            evals.append({k: ev.get(k) for k in keep})
        elif ev.get("event") == "done":
            final = ev.get("step")
    best = [e["step"] for e in evals if e.get("best")]
    return {"shipped_step": best[-1] if best else final, "final_step": final, "evals": evals}


def _split_counts(status: Any) -> Any:
    """The part of ``status --json`` that says how labels were split (kept as the CLI says it)."""
    if isinstance(status, dict):
        keep = {k: v for k, v in status.items() if "split" in k or k in ("classes", "counts")}
        return keep or status
    return status


def run_one(
    dataset: str,
    k: int,
    seed: int,
    mode: str,
    arms: list[str],
    extra_sets: list[str],
    root: Path,
    work: Path,
    threads: int,
    result: dict[str, Any],
    save: Callable[[], None],
) -> dict[str, Any]:
    """One data set / k / seed: the default arm, the supervised baseline, the ceiling.

    Fills ``result`` in place and calls ``save`` after each arm, so a run stopped part-way
    keeps the arms it finished."""
    proto = protocol(dataset, k, seed, mode, root)
    case = work / f"{dataset}-k{k}-s{seed}"
    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    dirs = stage(proto, case)
    run = Runner(case / "commands.log", threads)
    result.update(
        {
            "dataset": dataset,
            "k": k,
            "seed": seed,
            "mode": mode,
            "protocol": proto.notes,
            "arms": {},
        }
    )
    seed_set = [] if seed == 0 else [f"train.seed={seed}"]  # the default seed is 0
    project = case / "project"
    try:
        if {"default", "supervised"} & set(arms):
            run(
                "defectssft",
                "init",
                project,
                "--classes",
                ",".join(proto.classes),
                "--ok-class",
                OK,
            )
            run("defectssft", "import", project, dirs["labeled"], "--label-from", "folder")
            run("defectssft", "import", project, dirs["stream"])
    except RuntimeError as e:
        result["error"] = str(e)
        return result
    plan = []
    if "default" in arms:
        plan.append(("default", project, [*extra_sets, *seed_set], True))
    if "supervised" in arms:
        plan.append(
            ("supervised", project, [*extra_sets, *seed_set, "ssl.method=supervised"], False)
        )
    for arm, proj, sets, promote in plan:
        try:
            result["arms"][arm] = run_arm(
                run, proj, arm, sets, proto.held, dirs["held"], case, promote
            )
        except RuntimeError as e:
            result["arms"][arm] = {"error": str(e)}
        _progress(dataset, k, seed, arm, result["arms"][arm])
        save()
    if "ceiling" in arms:
        ceil = case / "ceiling"
        try:
            run("defectssft", "init", ceil, "--classes", ",".join(proto.classes), "--ok-class", OK)
            run("defectssft", "import", ceil, dirs["all_labels"], "--label-from", "folder")
            sets = [*extra_sets, *seed_set, "ssl.method=supervised"]
            result["arms"]["ceiling"] = run_arm(
                run, ceil, "ceiling", sets, proto.held, dirs["held"], case, False
            )
            result["arms"]["ceiling"]["labels"] = {c: len(v) for c, v in proto.all_labels.items()}
        except RuntimeError as e:
            result["arms"]["ceiling"] = {"error": str(e)}
        _progress(dataset, k, seed, "ceiling", result["arms"]["ceiling"])
        save()
    return result


def _progress(dataset: str, k: int, seed: int, arm: str, r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{dataset} k={k} seed={seed} {arm}: ERROR {r['error']}", flush=True)
        return
    line = r["line"]
    print(
        f"{dataset} k={k} seed={seed} {arm}: balanced {line['balanced_accuracy']:.3f}, "
        f"escapes {line['escapes']['x']}/{line['escapes']['n']}, "
        f"overkill {line['overkill']['x']}/{line['overkill']['n']}, "
        f"unsure {line['unsure']['x']}/{line['unsure']['n']}; evaluate: "
        f"{_claim_cell(r['claims'], line)} ({r['seconds']:.0f} s; shipped step "
        f"{(r.get('checkpoint') or {}).get('shipped_step')})",
        flush=True,
    )


# --------------------------------------------------------------------------- table


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _rate_cell(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "—"
    lo, hi = r["ci95"]
    return f"{r['x']}/{r['n']} = {_pct(r['rate'])} % [{_pct(lo)}, {_pct(hi)}]"


def _claim_cell(c: dict[str, Any], line: dict[str, Any]) -> str:
    """What ``evaluate`` claimed: test n and accuracy, the operating point, and each rate it
    states with its 95 % interval (test split, out of fold), ✓ / ✗ = whether that interval holds
    the line's rate on the held-out parts. Results from before #13 (no intervals printed): the
    escape rate as a count over the test split's defective images with its Wilson interval."""
    if "refused" in c:
        return "refused: " + c["refused"].split(";")[0].split(": ")[-1][:60]
    if not c.get("n") and not c.get("oof_n") and not (c.get("oof_escapes") or {}).get("n"):
        return "—"
    out = "no test split" if not c.get("n") else f"n {int(c['n'])}: acc. {c['accuracy_pct']} %"
    if c.get("threshold") is not None:
        band = c.get("unsure_band")
        out += f"; NG ≥ {c['threshold']:.3g}"
        if band and band[1] > band[0]:
            out += f", UNSURE [{band[0]:.3g}, {band[1]:.3g})"
        if c.get("chosen_on"):
            out += f" (from {c['chosen_on']})"
    cov = coverage(c, line)
    for where, rates in cov.items():
        label = "test" if where == "test" else f"out of fold n {c.get('oof_n') or '?'}"
        cells = [
            f"{'UNSURE' if name == 'unsure' else name} {r['k']}/{r['n']} "
            f"[{_pct(r['low'])}, {_pct(r['high'])}] {'✓' if r['holds'] else '✗'}"
            for name, r in rates.items()
        ]
        out += f"; {label}: " + ", ".join(cells)
    n_def = sum(v for name, v in c.get("test_support", {}).items() if name != OK)
    if not cov and c.get("escape_pct") is not None and n_def:
        x = round(c["escape_pct"] / 100 * n_def)
        lo, hi = wilson(x, n_def)
        seen = line["escapes"]["rate"]
        held = "" if seen is None else " ✓" if lo <= seen <= hi else " ✗"
        out += f", escapes {x}/{n_def} [{_pct(lo)}, {_pct(hi)}]{held}"
    if c.get("roc_auc") is not None:
        out += f", AUROC {c['roc_auc']:.3f}"
    return out


def coverage_tally(results: list[dict[str, Any]]) -> str:
    """One line: how many of the product's intervals held the line's rate, by source."""
    tally: dict[str, list[int]] = {}
    for res in results:
        for r in res.get("arms", {}).values():
            if "line" not in r or "refused" in r.get("claims", {"refused": 1}):
                continue
            for where, rates in coverage(r["claims"], r["line"]).items():
                for name, v in rates.items():
                    t = tally.setdefault(f"{where} {name}", [0, 0])
                    t[0] += v["holds"]
                    t[1] += 1
    if not tally:
        return ""
    return (
        "The product's 95 % intervals held the line's rate: "
        + "; ".join(
            f"{k.replace('oof', 'out of fold').replace('unsure', 'UNSURE')} {a}/{b}"
            for k, (a, b) in tally.items()
        )
        + ".\n"
    )


def _steps(ck: dict[str, Any] | None) -> str:
    return "—" if not ck else f"{ck['shipped_step']} of {ck['final_step']}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per data set / k / seed / arm."""
    head = (
        "| data set | k | seed | arm | balanced acc. (line) | AUROC (line) | escapes (line) "
        "| overkill (line) | UNSURE (line) | `evaluate` claimed (its intervals: ✓ hold the line's rate) "
        "| weights: step of "
        "| min |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for res in results:
        for arm, r in res["arms"].items():
            key = f"| {res['dataset']} | {res['k']} | {res['seed']} | {arm} "
            if "error" in r:
                rows.append(key + f"| error: {r['error'][:80]} | | | | | | | |")
                continue
            line, c = r["line"], r["claims"]
            ba = _pct(line["balanced_accuracy"])
            if "balanced_accuracy_class" in line:
                ba += f" (classes {_pct(line['balanced_accuracy_class'])})"
            claim = _claim_cell(c, line)
            auc = "—" if line.get("auroc") is None else f"{line['auroc']:.3f}"
            rows.append(
                key + f"| {ba} | {auc} | {_rate_cell(line['escapes'])} "
                f"| {_rate_cell(line['overkill'])} "
                f"| {_rate_cell(line['unsure'])} | {claim} | {_steps(r.get('checkpoint'))} "
                f"| {r['seconds'] / 60:.1f} |"
            )
    graded = [
        f"- {res['dataset']} k={res['k']} seed {res['seed']} {arm}: "
        + "; ".join(
            f"{g}: " + ", ".join(f"{v} {n}" for v, n in sorted(c.items()))
            for g, c in r["line"]["graded_verdicts"].items()
        )
        for res in results
        for arm, r in res["arms"].items()
        if "line" in r and r["line"].get("graded_verdicts")
    ]
    if graded:
        rows.append(
            "\nVerdicts on the held-out cells annotators graded 0.33 / 0.67 (not scored):\n"
        )
        rows += graded
    tally = coverage_tally(results)
    return head + "\n".join(rows) + "\n" + ("\n" + tally if tally else "")


def _rescore(res: dict[str, Any], verdicts: Path) -> dict[str, Any]:
    """The line's verdicts of a finished arm scored again (its work folder still there)."""
    proto = protocol(res["dataset"], res["k"], res["seed"], res["mode"], DATASETS)
    records = [json.loads(x) for x in verdicts.read_text().splitlines() if x.strip()]
    return score_verdicts(proto.held, records)


def merge(files: list[Path], stem: Path) -> int:
    """One results file and table from several runs (e.g. data sets run in parallel processes).

    For the same data set / k / seed / mode the entry with the most finished arms wins."""
    best: dict[tuple, dict[str, Any]] = {}
    sources = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{f}: not a default_path results file ({e})") from None
        sources.append(
            {
                "file": f.name,
                "command": data.get("command"),
                "minutes": data.get("minutes"),
                "cpu_minutes": data.get("cpu_minutes"),
            }
        )
        for res in data.get("results", []):
            if "arms" not in res:
                continue
            key = (res["dataset"], res["k"], res["seed"], res["mode"])
            for name, arm in res["arms"].items():  # results from before a field was recorded
                if not (arm.get("commands") and arm.get("version")):
                    continue
                project = Path(arm["commands"][0]["cmd"].split()[2])
                if "checkpoint" not in arm:
                    arm["checkpoint"] = checkpoint_choice(project, arm["version"])
                verdicts = project.parent / f"{name}.jsonl"
                if "auroc" not in arm.get("line", {}) and verdicts.is_file():
                    arm["line"] = _rescore(res, verdicts)
                if "refused" not in arm.get("claims", {}) and arm.get("evaluate_printed"):
                    arm["claims"] = parse_evaluate(arm["evaluate_printed"])  # today's parser
                    arm["coverage"] = coverage(arm["claims"], arm["line"])
            done = sum("error" not in a for a in res["arms"].values())
            if key not in best or done > sum("error" not in a for a in best[key]["arms"].values()):
                best[key] = res
    results = [best[k] for k in sorted(best)]
    payload = {"benchmark": "default_path", "merged_from": sources, "results": results}
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(table(results))
    print(table(results))
    return 0


# --------------------------------------------------------------------------- main


MODES = {
    # mode: (data sets, ks, seeds, --set for every arm) — quick/smoke say what they change
    "full": (list(DATASET_NAMES), [2, 5, 10], [0, 1, 2], []),
    "quick": (
        list(DATASET_NAMES),
        [5],
        [0],
        ["train.steps=60", "input.height=64", "input.width=64", "train.eval_every=20"],
    ),
    "smoke": (
        ["samples"],
        [3],
        [0],
        [
            "train.steps=2",
            "input.height=32",
            "input.width=32",
            "train.batch_size=4",
            "train.warmup_steps=1",
            "train.eval_every=2",
            "train.num_workers=0",
        ],
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one seed, k=5, 64 px, 60 steps")
    mode.add_argument("--smoke", action="store_true", help="samples/kolektorsdd, 2 steps, 32 px")
    ap.add_argument("--datasets", nargs="+", help=f"from {', '.join(DATASET_NAMES)}")
    ap.add_argument("--k", type=int, nargs="+", help="labels per defect type (default 2 5 10)")
    ap.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2")
    ap.add_argument("--arms", nargs="+", choices=ARMS, help="default: all three")
    ap.add_argument(
        "--set",
        dest="sets",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a training setting for every arm (a variant of the default path; recorded)",
    )
    ap.add_argument("--root", type=Path, help="data sets folder (default ../shared/datasets)")
    ap.add_argument("--workdir", type=Path, help="keep the projects here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process (default 1)")
    ap.add_argument("--name", help="results file stem (default default_path[_quick|_smoke])")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument(
        "--merge", type=Path, nargs="+", metavar="JSON", help="combine results files, run nothing"
    )
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out / f"{args.name or 'default_path_merged'}")
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    datasets, ks, seeds, extra = MODES[mode_name]
    datasets, ks, seeds = args.datasets or datasets, args.k or ks, args.seeds or seeds
    extra = [*extra, *args.sets]
    arms = args.arms or (["default"] if mode_name == "smoke" else list(ARMS))
    if mode_name == "smoke":
        root = args.root or ROOT / "samples" / "kolektorsdd"
    else:
        root = args.root or DATASETS
        if not root.is_dir():
            raise SystemExit(f"data sets folder {root} not found (--root)")
    name = args.name or ("default_path" if mode_name == "full" else f"default_path_{mode_name}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="default_path_"))
    started = time.time()
    payload: dict[str, Any] = {
        "benchmark": "default_path",
        "mode": mode_name,
        "settings_changed": extra,
        "protocol": {
            "min_ok_labels": MIN_OK_LABELS if mode_name != "smoke" else 3,
            "stream_defect_rate": STREAM_DEFECT_RATE,
            "neu_good_class": NEU_GOOD,
        },
        "command": " ".join(["python", "benchmarks/default_path.py", *(argv or sys.argv[1:])]),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "results": [],
    }
    json_path, md_path = args.out / f"{name}.json", args.out / f"{name}.md"

    def save() -> None:
        payload["minutes"] = round((time.time() - started) / 60, 1)
        child = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time: load-independent
        payload["cpu_minutes"] = round((child.ru_utime + child.ru_stime) / 60, 1)
        json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        md_path.write_text(table([r for r in payload["results"] if "arms" in r]))

    try:
        for dataset in datasets:
            for k in ks:
                for seed in seeds:
                    res: dict[str, Any] = {}
                    payload["results"].append(res)
                    run_one(
                        dataset,
                        k,
                        seed,
                        mode_name,
                        arms,
                        extra,
                        root,
                        work,
                        args.threads,
                        res,
                        save,
                    )
                    save()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(payload["results"]))
    print(f"results: {json_path} and {md_path} ({payload.get('minutes', 0)} min)")
    failed = [r for res in payload["results"] for r in [res, *res["arms"].values()] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
