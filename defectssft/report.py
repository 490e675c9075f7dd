"""The evaluation report: a Markdown page with plots and a gallery of misclassified images.

Written to ``PROJECT/models/vNNNN/eval/`` next to the model it describes: ``report.md``,
``metrics.json``, ``confusion.png``, ``scores.png``, ``roc.png`` and ``gallery/``.
Plots use matplotlib's Agg backend (no display needed on a server).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GALLERY_MAX = 48
THUMB_MIN_PX = 192  # the gallery's images: short side at least this (a thin crack stays visible)
THUMB_MAX_PX = 512  # and long side at most this


@dataclass(frozen=True)
class Item:
    """One evaluated image: where it is, what it is, what the model said."""

    image_id: int
    path: Path
    true: str
    pred: str
    confidence: float
    score: float | None
    name: str = ""  # the original file name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    plt = _pyplot()
    n = len(classes)
    # Never smaller than a readable 2-class plot; the title gets its own room (no clipping).
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.7 * n), max(4.0, 1.4 + 0.6 * n)), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                color="white" if top and cm[i, j] > top / 2 else "black",
            )
    ax.set_title("confusion matrix\n(test split)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_scores(scores: np.ndarray, is_defect: np.ndarray, threshold: float, path: Path) -> Path:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[~is_defect], bins=bins, alpha=0.6, label="good (OK)", color="#2ca02c")
    ax.hist(scores[is_defect], bins=bins, alpha=0.6, label="defective", color="#d62728")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("defect score (1 - p(OK))")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # image counts are whole numbers
    ax.legend()
    ax.set_title("defect score by true class (test split)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("overkill rate (good parts rejected)")
    ax.set_ylabel("defect catch rate (1 - escape rate)")
    ax.legend(loc="lower right")
    ax.set_title("ROC (test split)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_gallery(
    items: Sequence[Item], folder: Path, max_items: int = GALLERY_MAX
) -> list[tuple[Item, str]]:
    """Thumbnails of misclassified images, the most confident mistakes first."""
    from defectssft_line.preprocess import ImageDecodeError, read_image, to_rgb8

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    wrong = sorted((i for i in items if i.true != i.pred), key=lambda i: -i.confidence)
    out = []
    for item in wrong[:max_items]:
        try:
            rgb = to_rgb8(read_image(item.path))
        except (ImageDecodeError, ValueError):
            continue
        h, w = rgb.shape[:2]
        s = min(THUMB_MIN_PX / min(h, w), THUMB_MAX_PX / max(h, w))
        interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_NEAREST  # enlarged: pixels stay sharp
        thumb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
        name = f"{item.image_id}_{item.true}_as_{item.pred}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
        out.append((item, f"{folder.name}/{name}"))
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _markdown(
    metrics: dict[str, Any], plots: dict[str, str], gallery: list[tuple[Item, str]], n_wrong: int
) -> str:
    classes = metrics["classes"]
    lines = [
        f"# Evaluation of model {metrics['version']}",
        "",
        f"Project `{metrics.get('project', '')}`, backbone `{metrics.get('backbone', '')}`, "
        f"evaluated {metrics['evaluated_at']} on the frozen **test split** "
        f"({metrics['n']} images, split hash `{metrics['test_hash'][:12]}`).",
        "",
        f"* Accuracy: **{_pct(metrics['accuracy'])}**, macro F1 {_num(metrics['macro_f1'])}",
    ]
    insp = metrics.get("inspection")
    op = metrics.get("operating_point")
    if insp and op:
        lines += [
            f"* ROC AUC {_num(insp['roc_auc'])}, average precision {_num(insp['average_precision'])} "
            f"({insp['n_defective']} defective, {insp['n_good']} good)",
            f"* Operating threshold **{op['threshold']:.4f}** (from {op['chosen_on']}): "
            f"escape rate **{_pct(op['escape_rate'])}**, overkill rate **{_pct(op['overkill_rate'])}**",
        ]
        tm = insp.get("threshold_for_max_escape")
        if tm:
            lines.append(
                f"* For escape <= {_pct(insp['max_escape'])} on this test split the threshold would be "
                f"{tm['threshold']:.4f}: escape {_pct(tm['escape_rate'])}, overkill {_pct(tm['overkill_rate'])}"
            )
    elif op:
        lines.append(f"* No OK class: error rate {_pct(op['error_rate'])}")
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in classes:
        pc = metrics["per_class"][name]
        lines.append(
            f"| {name} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | "
            f"{pc['support']} |"
        )
    lines += ["", "## Plots", ""]
    for title, rel in plots.items():
        lines.append(f"![{title}]({rel})")
    lines += ["", f"## Misclassified images ({n_wrong}, showing {len(gallery)})", ""]
    if gallery:
        lines += ["| image | true | predicted | confidence | file |", "|---|---|---|---:|---|"]
        for item, rel in gallery:
            lines.append(
                f"| ![]({rel}) | {item.true} | {item.pred} | {item.confidence:.3f} | "
                f"`{item.name or item.path.name}` (id {item.image_id}) |"
            )
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_report(
    folder: Path,
    metrics: dict[str, Any],
    items: Sequence[Item],
    scores: np.ndarray | None = None,
    is_defect: np.ndarray | None = None,
) -> Path:
    """Write the report folder; returns the path of ``report.md``."""
    from defectssft import metrics as M

    folder.mkdir(parents=True, exist_ok=True)
    plots = {
        "confusion matrix": plot_confusion(
            np.asarray(metrics["confusion_matrix"]), metrics["classes"], folder / "confusion.png"
        ).name
    }
    op = metrics.get("operating_point") or {}
    if scores is not None and is_defect is not None and is_defect.any() and (~is_defect).any():
        plots["defect scores"] = plot_scores(
            scores, is_defect, op.get("threshold", 0.5), folder / "scores.png"
        ).name
        fpr, tpr, _ = M.roc_curve(scores, is_defect)
        plots["ROC"] = plot_roc(fpr, tpr, M.roc_auc(scores, is_defect), folder / "roc.png").name
    gallery = write_gallery(items, folder / "gallery")
    n_wrong = sum(1 for i in items if i.true != i.pred)
    (folder / "metrics.json").write_text(
        json.dumps(metrics, indent=2, default=str), encoding="utf-8"
    )
    path = folder / "report.md"
    path.write_text(_markdown(metrics, plots, gallery, n_wrong), encoding="utf-8")
    return path
