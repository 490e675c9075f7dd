"""Make a model version production only on evidence, and publish it for the line.

Both models are (re-)evaluated now on the same frozen test split, and compared by the **line's
verdicts** (OK / NG / UNSURE at each version's operating point), image by image:

* **a first model** must beat chance: with an OK class, it must reject (NG or UNSURE) defective
  parts more often than good ones beyond what chance gives on these counts (one-sided Fisher
  exact test, p ≤ ``ALPHA``); without one, its top class must be right more often than always
  answering the most common class (exact binomial test). A test split without both kinds of
  part is not evidence: the version's out-of-fold evidence is used instead when it has some.
* **a challenger** must not pass more defective parts than production (escapes), nor reject more
  good parts beyond ``overkill_tolerance``, and must be **better by a paired test**: of the
  parts where the two verdicts differ in being right (right = defective → NG, good → OK;
  UNSURE is not right), the challenger must be right on enough more of them (one-sided exact
  McNemar, p ≤ ``ALPHA``). Two good test images are never enough.

``--force`` publishes anyway and says which of these checks it overrides. A refusal says why,
with the counts. Publishing = export the version (checked, ``defectssft.exportcheck``) to
``models/vNNNN/model.onnx``, copy it atomically to ``PROJECT/exports/production.onnx`` (a running
``defectssft-line`` picks it up), then mark the version production. If the export fails nothing
changes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectssft import metrics as M
from defectssft.errors import DefectssftError
from defectssft.evaluate import (
    DEFAULT_MAX_ESCAPE,
    Evaluation,
    EvaluationError,
    evaluate_project_model,
)
from defectssft.fsutil import atomic_path

DEFAULT_OVERKILL_TOLERANCE = 0.005
ALPHA = 0.05  # the evidence a promotion needs: a one-sided exact test at this level
_EPS = 1e-12


class PromotionError(DefectssftError):
    """A promotion that cannot be done as asked."""


@dataclass(frozen=True)
class Judgement:
    """The outcome of a promotion rule: allowed or not, and the sentence that says why."""

    ok: bool
    reason: str


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _right(ev: Evaluation) -> np.ndarray:
    """Per test image: did the line's verdict (or, without an OK class, the top class) get it
    right? Defective → NG, good → OK; UNSURE is not right."""
    m = ev.metrics
    classes, ok = m["classes"], m.get("ok_class")
    if ok not in classes or not ev.verdicts:
        return ev.probs.argmax(axis=1) == ev.labels if len(ev.labels) else np.zeros(0, bool)
    defect = ev.labels != classes.index(ok)
    v = np.asarray(ev.verdicts, dtype=object)
    return np.where(defect, v == "NG", v == "OK")


def _oof_counts(metrics: dict[str, Any]) -> dict[str, Any] | None:
    oof = metrics.get("oof")
    if not oof or not oof.get("n_defective") or not oof.get("n_good"):
        return None
    return oof


def judge_first(ev: Evaluation) -> Judgement:
    """Does a first model beat chance on its evidence (module docstring)?"""
    m = ev.metrics
    op = m.get("operating_point") or {}
    if "escapes" not in op:  # no OK class: the top class against always the commonest class
        n = len(ev.labels)
        if n == 0:
            return Judgement(False, "the test split is empty: no evidence it beats chance")
        k = int(_right(ev).sum())
        base = float(np.bincount(ev.labels).max()) / n
        p = 1.0 - M._binom_cdf(k - 1, n, base)  # noqa: SLF001 - exact binomial tail
        said = (
            f"top class right on {k} / {n} test parts vs {100 * base:.0f} % for always the "
            f"commonest class (exact binomial p = {p:.3g})"
        )
        if p <= ALPHA:
            return Judgement(True, f"it beats chance: {said}")
        return Judgement(False, f"it does not beat chance on the evidence: {said} > {ALPHA}")
    esc, ovk = op["escapes"], op["overkill"]
    source, where = (esc, ovk), "test split"
    if not (esc["n"] and ovk["n"]):
        oof = _oof_counts(m)
        if oof is None:
            return Judgement(
                False,
                f"the test split holds {esc['n']} defective and {ovk['n']} good parts and there "
                "is no out-of-fold evidence: nothing shows it beats chance",
            )
        source, where = (oof["escapes"], oof["overkill"]), "out-of-fold evidence"
    esc, ovk = source
    passed_defects = esc["k"]
    rejected_defects = esc["n"] - passed_defects
    unsure_good = 0
    verdicts = m.get("verdicts") or {}
    if where == "test split":
        ok = m["ok_class"]
        unsure_good = int((verdicts.get(ok) or {}).get("UNSURE", 0))
    rejected_good = ovk["k"] + unsure_good  # not passed: NG or UNSURE
    passed_good = ovk["n"] - rejected_good
    p = M.fisher_exact_greater(rejected_defects, passed_defects, rejected_good, passed_good)
    stopped_good = M.rate_claim(rejected_good, ovk["n"])
    said = (
        f"on the {where} it stops {rejected_defects} / {esc['n']} defective and "
        f"{rejected_good} / {ovk['n']} good parts ({M.format_rate('escapes', esc)}; "
        f"{M.format_rate('good parts stopped', stopped_good)}; "
        f"one-sided Fisher exact p = {p:.3g})"
    )
    if p <= ALPHA:
        return Judgement(True, f"it beats chance: {said}")
    return Judgement(False, f"it does not beat chance: {said} > {ALPHA}")


def judge_challenger(
    challenger: Evaluation,
    champion: Evaluation,
    overkill_tolerance: float = DEFAULT_OVERKILL_TOLERANCE,
) -> Judgement:
    """Is the challenger better than production on the same test split (module docstring)?"""
    c, p = challenger.metrics, champion.metrics
    if c.get("test_hash") != p.get("test_hash"):
        return Judgement(False, "the two models were evaluated on different test splits")
    if len(challenger.labels) == 0:
        return Judgement(False, "the test split is empty: no paired evidence")
    by_id = {i: k for k, i in enumerate(champion.image_ids)}
    order = [by_id[i] for i in challenger.image_ids]
    right_c = _right(challenger)
    right_p = _right(champion)[order]
    b = int(np.sum(right_c & ~right_p))  # only the challenger is right
    d = int(np.sum(~right_c & right_p))  # only production is right
    pval = M.mcnemar_exact(b, d)
    paired = (
        f"of {len(right_c)} test parts it is right on {b} that production gets wrong and wrong "
        f"on {d} that production gets right (one-sided exact McNemar p = {pval:.3g})"
    )
    c_op, p_op = c.get("operating_point", {}), p.get("operating_point", {})
    if "escapes" in c_op and "escapes" in p_op:
        ce, pe = c_op["escapes"], p_op["escapes"]
        co, po = c_op["overkill"], p_op["overkill"]
        summary = (
            f"{M.format_rate('escapes', ce)} vs production's {M.format_rate('escapes', pe)}; "
            f"{M.format_rate('overkill', co)} vs production's {M.format_rate('overkill', po)}"
        )
        if ce["k"] > pe["k"]:
            return Judgement(False, f"it passes more defective parts: {summary}")
        c_rate, p_rate = c_op.get("overkill_rate") or 0.0, p_op.get("overkill_rate") or 0.0
        if c_rate > p_rate + overkill_tolerance + _EPS:
            return Judgement(
                False,
                f"its overkill rises beyond the tolerance (+{_pct(overkill_tolerance)}): {summary}",
            )
        paired = f"{paired}; {summary}"
    if pval <= ALPHA:
        return Judgement(True, f"better on the evidence: {paired}")
    return Judgement(False, f"not enough evidence that it is better: {paired} > {ALPHA}")


def compare(
    candidate: dict[str, Any],
    production: dict[str, Any],
    overkill_tolerance: float = DEFAULT_OVERKILL_TOLERANCE,
) -> tuple[bool, str]:
    """(not-worse?, reason) of two ``metrics["test"]`` dicts of the same test split, by their
    rates only (no paired evidence: ``judge_challenger`` decides promotions)."""
    if candidate.get("test_hash") != production.get("test_hash"):
        return False, "the two models were evaluated on different test splits"
    c_op, p_op = candidate.get("operating_point", {}), production.get("operating_point", {})
    if c_op.get("escape_rate") is not None and p_op.get("escape_rate") is not None:
        ce, pe = c_op["escape_rate"], p_op["escape_rate"]
        co, po = c_op["overkill_rate"] or 0.0, p_op["overkill_rate"] or 0.0
        summary = (
            f"escape {_pct(ce)} vs {_pct(pe)}, overkill {_pct(co)} vs {_pct(po)} "
            f"(tolerance +{_pct(overkill_tolerance)})"
        )
        if ce > pe + _EPS:
            return False, f"escape rate would rise: {summary}"
        if co > po + overkill_tolerance + _EPS:
            return False, f"overkill rate would rise beyond the tolerance: {summary}"
        return True, f"not worse: {summary}"
    ce, pe = candidate["error_rate"], production["error_rate"]
    summary = f"error rate {_pct(ce)} vs {_pct(pe)} (tolerance +{_pct(overkill_tolerance)})"
    if ce > pe + overkill_tolerance + _EPS:
        return False, f"error rate would rise: {summary}"
    return True, f"not worse: {summary}"


def _atomic_copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def production_path(project) -> Path:
    return Path(project.root) / "exports" / "production.onnx"


def publish(project, version: str) -> Path:
    """Export ``version`` (checked), copy it to exports/production.onnx, mark it production.
    With its anomaly head unless its newest export was made without it
    (``verdicts.publish_with_head``: the line gets what the app and ``evaluate`` decided)."""
    from defectssft.export import export_project_model
    from defectssft.verdicts import publish_with_head

    result = export_project_model(project, version, anomaly=publish_with_head(project, version))
    dest = production_path(project)
    _atomic_copy(Path(result.path), dest)
    project.set_production(version)
    return dest


def judge(
    project,
    version: str,
    overkill_tolerance: float = DEFAULT_OVERKILL_TOLERANCE,
    max_escape: float = DEFAULT_MAX_ESCAPE,
) -> Judgement:
    """The promotion rule for ``version`` against today's production (module docstring)."""
    current = project.production_model()
    candidate = evaluate_project_model(project, version, max_escape, report=False)
    if current is None:
        j = judge_first(candidate)
        what = "first production model"
        return Judgement(j.ok, f"{what}: {j.reason}")
    try:
        baseline = evaluate_project_model(project, current, max_escape, report=False)
    except EvaluationError as e:
        return Judgement(
            False,
            f"cannot evaluate production model {current} on today's test split ({e}); "
            "promote by hand with `defectssft promote --force`",
        )
    j = judge_challenger(candidate, baseline, overkill_tolerance)
    return Judgement(j.ok, f"against {current}: {j.reason}")


def maybe_promote(
    project,
    version: str,
    overkill_tolerance: float = DEFAULT_OVERKILL_TOLERANCE,
    max_escape: float = DEFAULT_MAX_ESCAPE,
) -> tuple[bool, str]:
    """Promote ``version`` if the evidence says so (module docstring).

    Returns (promoted, reason). This is what ``defectssft train --promote-if-better`` calls.
    """
    if overkill_tolerance < 0:
        raise PromotionError(f"overkill tolerance must be >= 0, got {overkill_tolerance}")
    project.get_model(version)  # a one-line error for an unknown version
    current = project.production_model()
    if current == version:
        return False, f"{version} is already the production model"
    j = judge(project, version, overkill_tolerance, max_escape)
    if not j.ok:
        keep = f"{current} stays production" if current else "nothing is production"
        return False, (
            f"{version} not promoted, {keep}: {j.reason}. Label more parts, or "
            f"`defectssft promote {version} --force` to publish it anyway"
        )
    dest = publish(project, version)
    if current is None:
        return True, f"{version} is the first production model ({j.reason}); published to {dest}"
    return True, f"{version} replaces {current} ({j.reason}); published to {dest}"


def force_promote(project, version: str) -> tuple[bool, str]:
    """Publish ``version`` without the evidence rule (a rollback, or a deliberate change),
    saying which check it overrides."""
    project.get_model(version)
    current = project.production_model()
    if current == version:
        overrides = "nothing (it is already production)"
    else:
        try:
            j = judge(project, version)
            overrides = (
                f"nothing (the evidence rule would allow it: {j.reason})"
                if j.ok
                else f"the evidence rule, which refuses it: {j.reason}"
            )
        except DefectssftError as e:
            overrides = f"the evidence rule, which cannot judge it ({e})"
    dest = publish(project, version)
    return True, f"{version} is production (forced; overrides {overrides}); published to {dest}"
