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
    verdict: str | None = None  # the line's verdict (OK / NG / UNSURE), None without an OK class

    def mistake(self, ok_class: str | None = None) -> str | None:
        """What is wrong with this image's result: ``escape`` / ``overkill`` / ``unsure`` (by
        the line's verdict), ``class`` (right verdict, wrong class), or None."""
        if self.verdict is not None and ok_class is not None:
            if self.verdict == "UNSURE":
                return "unsure"
            if self.true == ok_class and self.verdict == "NG":
                return "overkill"
            if self.true != ok_class and self.verdict == "OK":
                return "escape"
        return "class" if self.true != self.pred else None


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


def plot_scores(
    scores: np.ndarray,
    is_defect: np.ndarray,
    threshold: float,
    path: Path,
    band: tuple[float | None, float | None] = (None, None),
) -> Path:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[~is_defect], bins=bins, alpha=0.6, label="good (OK)", color="#2ca02c")
    ax.hist(scores[is_defect], bins=bins, alpha=0.6, label="defective", color="#d62728")
    ax.axvline(threshold, color="black", linestyle="--", label=f"NG threshold {threshold:.3g}")
    low, high = band
    if low is not None and high is not None and high > low:
        ax.axvspan(low, high, color="#ff7f0e", alpha=0.2, label="UNSURE band")
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


_MISTAKE_ORDER = {"escape": 0, "overkill": 1, "unsure": 2, "class": 3}


def write_gallery(
    items: Sequence[Item], folder: Path, max_items: int = GALLERY_MAX, ok_class: str | None = None
) -> list[tuple[Item, str]]:
    """Thumbnails of the mistakes: by the line's verdict first (escapes, overkill, UNSURE), then
    wrong classes; the most confident first within each."""
    from defectssft_line.preprocess import ImageDecodeError, read_image, to_rgb8

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    wrong = sorted(
        (i for i in items if i.mistake(ok_class)),
        key=lambda i: (_MISTAKE_ORDER[i.mistake(ok_class) or "class"], -i.confidence),
    )
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
        shown = item.pred if item.verdict is None else f"{item.verdict}-{item.pred}"
        name = f"{item.image_id}_{item.true}_as_{shown}.jpg"
        cv2.imwrite(str(folder / name), cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
        out.append((item, f"{folder.name}/{name}"))
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _claim(name: str, claim: dict[str, Any] | None) -> str:
    from defectssft.metrics import format_rate

    return f"{name} n/a" if not claim else format_rate(name, claim)


def _markdown(
    metrics: dict[str, Any], plots: dict[str, str], gallery: list[tuple[Item, str]], n_wrong: int
) -> str:
    classes = metrics["classes"]
    lines = [
        f"# Evaluation of model {metrics['version']}",
        "",
        f"Project `{metrics.get('project', '')}`, backbone `{metrics.get('backbone', '')}`, "
        f"evaluated {metrics['evaluated_at']} on the frozen **test split** "
        f"({metrics['n']} images, split hash `{metrics['test_hash'][:12]}`). Every rate comes "
        "with its count and its exact 95 % interval: what this many parts can tell.",
        "",
    ]
    lines += [f"> {w}" for w in metrics.get("warnings", [])]
    if metrics.get("warnings"):
        lines.append("")
    acc = metrics.get("accuracy_claim")
    lines.append(
        f"* Top class right: {_claim('correct', acc)}, macro F1 {_num(metrics['macro_f1'])}"
    )
    insp = metrics.get("inspection")
    op = metrics.get("operating_point")
    if insp and op:
        applied = op.get("applied") or {}
        lines += [
            f"* ROC AUC {_num(insp['roc_auc'])}, average precision {_num(insp['average_precision'])} "
            f"({insp['n_defective']} defective, {insp['n_good']} good)",
            f"* Operating point (calibrated on {op['chosen_on']}): NG at score >= "
            f"**{op['threshold']:.4g}**, UNSURE in [{op.get('unsure_low', op['threshold']):.4g}, "
            f"{op.get('unsure_high', op['threshold']):.4g})",
        ]
        if applied.get("source") == "chosen":
            lines.append(
                f"* The line uses the operating point chosen for this version: NG >= "
                f"{applied['unsure_high']:.4g}, UNSURE from {applied['unsure_low']:.4g}"
            )
        lines.append(
            f"* Line verdicts on the test split: **{_claim('escapes', op.get('escapes'))}**; "
            f"{_claim('overkill', op.get('overkill'))}; {_claim('UNSURE', op.get('unsure'))}"
        )
        from defectssft.evaluate import stream_text

        said = stream_text(op)
        if said:
            lines.append(f"* On the {said}")
    elif op:
        lines.append(f"* {op.get('note', 'No OK class')}: {_claim('errors', op.get('errors'))}")
    oof = metrics.get("oof")
    if oof:
        lines.append(
            f"* Out-of-fold evidence ({oof['n']} labeled images): "
            f"{_claim('escapes', oof['escapes'])}; {_claim('overkill', oof['overkill'])}; "
            f"{_claim('UNSURE', oof['unsure'])} ({oof['note']})"
        )
    verdicts = metrics.get("verdicts")
    if verdicts:
        lines += [
            "",
            "## Line verdicts by class (test split)",
            "",
            "| true class | OK | NG | UNSURE |",
            "|---|---:|---:|---:|",
        ]
        for name in classes:
            v = verdicts.get(name, {})
            lines.append(f"| {name} | {v.get('OK', 0)} | {v.get('NG', 0)} | {v.get('UNSURE', 0)} |")
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
    lines += ["", f"## Mistakes ({n_wrong}, showing {len(gallery)})", ""]
    if gallery:
        lines += [
            "| image | true | line verdict | predicted class | confidence | score | file |",
            "|---|---|---|---|---:|---:|---|",
        ]
        for item, rel in gallery:
            score = "n/a" if item.score is None else f"{item.score:.4g}"
            lines.append(
                f"| ![]({rel}) | {item.true} | {item.verdict or '-'} | {item.pred} | "
                f"{item.confidence:.3f} | {score} | `{item.name or item.path.name}` "
                f"(id {item.image_id}) |"
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
            scores,
            is_defect,
            op.get("threshold", 0.5),
            folder / "scores.png",
            band=(op.get("unsure_low"), op.get("unsure_high")),
        ).name
        fpr, tpr, _ = M.roc_curve(scores, is_defect)
        plots["ROC"] = plot_roc(fpr, tpr, M.roc_auc(scores, is_defect), folder / "roc.png").name
    ok = metrics.get("ok_class")
    gallery = write_gallery(items, folder / "gallery", ok_class=ok)
    n_wrong = sum(1 for i in items if i.mistake(ok))
    (folder / "metrics.json").write_text(
        json.dumps(metrics, indent=2, default=str), encoding="utf-8"
    )
    path = folder / "report.md"
    path.write_text(_markdown(metrics, plots, gallery, n_wrong), encoding="utf-8")
    return path
