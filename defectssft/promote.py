"""Make a model version production only when it is not worse, and publish it for the line.

The rule, checked on the same frozen test split (both models are re-evaluated now, so a
split that grew since the last evaluation cannot favour either):

* with an OK class: the candidate's escape rate must not be higher than production's, and its
  overkill rate not higher by more than ``overkill_tolerance`` (each at its operating threshold);
* without an OK class (every class is a defect type): its error rate must not be higher by
  more than ``overkill_tolerance``.

Publishing = export the version (self-checked) to ``models/vNNNN/model.onnx``, copy it
atomically to ``PROJECT/exports/production.onnx`` (a running ``defectssft-line`` picks it up),
then mark the version production in the project. If the export fails nothing changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from defectssft.errors import DefectssftError
from defectssft.evaluate import DEFAULT_MAX_ESCAPE, EvaluationError, evaluate_project_model
from defectssft.fsutil import atomic_path

DEFAULT_OVERKILL_TOLERANCE = 0.005
_EPS = 1e-12


class PromotionError(DefectssftError):
    """A promotion that cannot be done as asked."""


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def compare(
    candidate: dict[str, Any],
    production: dict[str, Any],
    overkill_tolerance: float = DEFAULT_OVERKILL_TOLERANCE,
) -> tuple[bool, str]:
    """(better-or-equal?, reason) for two ``metrics["test"]`` dicts of the same test split."""
    if candidate.get("test_hash") != production.get("test_hash"):
        return False, "the two models were evaluated on different test splits"
    c_op, p_op = candidate.get("operating_point", {}), production.get("operating_point", {})
    if "escape_rate" in c_op and "escape_rate" in p_op:
        ce, pe = c_op["escape_rate"], p_op["escape_rate"]
        co, po = c_op["overkill_rate"], p_op["overkill_rate"]
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
    """Export ``version`` (checked), copy it to exports/production.onnx, mark it production."""
    from defectssft.export import export_project_model

    result = export_project_model(project, version)
    dest = production_path(project)
    _atomic_copy(Path(result.path), dest)
    project.set_production(version)
    return dest


def maybe_promote(
    project,
    version: str,
    overkill_tolerance: float = DEFAULT_OVERKILL_TOLERANCE,
    max_escape: float = DEFAULT_MAX_ESCAPE,
) -> tuple[bool, str]:
    """Promote ``version`` if it is not worse than production (see module doc).

    Returns (promoted, reason). This is what ``defectssft train --promote-if-better`` calls.
    """
    if overkill_tolerance < 0:
        raise PromotionError(f"overkill tolerance must be >= 0, got {overkill_tolerance}")
    project.get_model(version)  # a one-line error for an unknown version
    current = project.production_model()
    if current == version:
        return False, f"{version} is already the production model"
    candidate = evaluate_project_model(project, version, max_escape, report=False).metrics
    if current is None:
        dest = publish(project, version)
        return True, f"{version} is the first production model; published to {dest}"
    try:
        baseline = evaluate_project_model(project, current, max_escape, report=False).metrics
    except EvaluationError as e:
        return False, (
            f"cannot evaluate production model {current} on today's test split ({e}); "
            f"promote by hand with `defectssft promote --force`"
        )
    ok, reason = compare(candidate, baseline, overkill_tolerance)
    if not ok:
        return False, f"{version} not promoted, {current} stays production: {reason}"
    dest = publish(project, version)
    return True, f"{version} replaces {current} ({reason}); published to {dest}"


def force_promote(project, version: str) -> tuple[bool, str]:
    """Publish ``version`` without comparing (a rollback, or a deliberate change)."""
    project.get_model(version)
    dest = publish(project, version)
    return True, f"{version} is production (forced); published to {dest}"
