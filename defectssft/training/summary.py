"""What the default path decided in a training run, as data and as the lines ``train`` prints.

``train_project`` stores the dict under ``metrics["training"]`` of the model version (the app
and reports read it there); ``describe`` turns it into the plain-text lines ``defectssft train``
prints after ``model vNNNN``.
"""

from __future__ import annotations

from typing import Any


def label_split(data: Any, min_labels: int, val_fraction: float, test_fraction: float) -> dict:
    """How the labels were split: per class train / val / test counts, and the rule."""
    per: dict[str, dict[str, int]] = {c: {"train": 0, "val": 0, "test": 0} for c in data.classes}
    for split, items in (("train", data.labeled), ("val", data.val), ("test", data.test)):
        for _, lab in items:
            per[data.classes[lab]][split] += 1
    kept = [c for c, n in per.items() if n["train"] and not n["val"] and not n["test"]]
    return {
        "train": len(data.labeled),
        "val": len(data.val),
        "test": len(data.test),
        "per_class": per,
        "kept_for_training": kept,
        "rule": (
            f"a class is held out from (val {val_fraction:g}, test {test_fraction:g}) only once "
            f"it has {min_labels} labels (split.min_labels); smaller classes train on all of "
            "theirs; splits once drawn stay frozen"
        ),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _count(c: dict[str, int] | None) -> str:
    if not c or not c.get("n"):
        return "n/a"
    return f"{c['x']}/{c['n']} ({100 * c['x'] / c['n']:.0f} %)"


def describe_evidence(ev: dict[str, Any]) -> str:
    over = f" over the {ev['classes']} classes" if ev.get("classes", 2) > 2 else ""
    out = f"balanced accuracy{over} {_pct(ev.get('balanced_accuracy'))} on {ev.get('n')} images"
    if "auroc" in ev:
        out += f", AUROC {'n/a' if ev['auroc'] is None else format(ev['auroc'], '.3f')}"
    if "escapes" in ev:
        out += (
            f", at threshold 0.5 escapes {_count(ev['escapes'])}, overkill {_count(ev['overkill'])}"
        )
    return out


def describe(d: dict[str, Any]) -> list[str]:
    """The lines ``defectssft train`` prints about a finished run's decisions."""
    lines = []
    lab = d.get("labels")
    if lab:
        lines.append(
            f"labels: {lab['train']} train, {lab['val']} val, {lab['test']} test ({lab['rule']})"
        )
        if lab["kept_for_training"]:
            lines.append(
                "  kept whole for training (too few to hold out): "
                + ", ".join(
                    f"{c} ({lab['per_class'][c]['train']})" for c in lab["kept_for_training"]
                )
            )
    inp = d.get("input")
    if inp:
        lines.append(f"input: {inp['height']} x {inp['width']} px ({inp['from']})")
    cf = d.get("cross_fit") or {}
    if cf.get("folds"):
        lines.append(
            f"cross-fitting: {cf['folds']} folds x {cf['fold_steps']} steps "
            f"({', '.join(cf['arms'])}), because {cf['why']}"
        )
        for arm, ev in cf.get("evidence", {}).items():
            lines.append(f"  out of fold, {arm}: {describe_evidence(ev)}")
    elif cf:
        lines.append(f"cross-fitting: none ({cf.get('why')})")
    guard = d.get("guard")
    if guard:
        lines.append(f"method: {guard['method']}: {guard['why']}")
    w = d.get("weights")
    if w:
        lines.append(f"weights: {w['label']}, step {w['step']} ({w['why']})")
    ev = d.get("evidence")
    if ev:
        lines += describe_claims(ev)
    return lines


WEAK_AUROC = 0.6  # below this the evidence says the model hardly ranks defects above good parts


def describe_claims(ev: dict[str, Any]) -> list[str]:
    """The evidence the shipped model's numbers rest on: its size, the rates at the 0.5 threshold
    with their 95 % intervals (``metrics.rate_claim``), and a warning when it is too thin to
    support them or says the model does not separate defective from good parts."""
    from defectssft.metrics import format_rate, rate_claim, support_warning

    if "escapes" not in ev:  # no OK class, or validation evidence: its numbers as they are
        return [f"evidence ({ev['source']}): {describe_evidence(ev)}"]
    esc, ok = ev["escapes"], ev["overkill"]
    claims = {"escapes": rate_claim(esc["x"], esc["n"]), "overkill": rate_claim(ok["x"], ok["n"])}
    auroc = "n/a" if ev.get("auroc") is None else format(ev["auroc"], ".3f")
    lines = [
        f"evidence ({ev['source']}, {ev.get('n')} labeled images: {esc['n']} defective, "
        f"{ok['n']} good): AUROC {auroc}; at the 0.5 threshold "
        + ", ".join(format_rate(k, c) for k, c in claims.items()),
        "  `defectssft evaluate` calibrates the operating point (NG threshold, UNSURE band) on "
        "it and the unlabeled stream",
    ]
    if ev.get("auroc") is not None and ev["auroc"] < WEAK_AUROC:
        lines.append(
            f"warning: out of fold the model hardly ranks defective parts above good ones (AUROC "
            f"{ev['auroc']:.2f}; 0.5 is chance): label more parts before relying on it"
        )
    for name, what in (("escapes", "defective"), ("overkill", "good")):
        warn = support_warning(name, claims[name], f"{what} labeled parts")
        if warn:
            lines.append(warn)
    return lines
