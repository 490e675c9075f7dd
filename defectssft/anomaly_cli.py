"""``defectssft fit-anomaly PROJECT [--model vN]``: fit a version's anomaly head (novel parts).

``fit_and_report`` is also the last step of ``defectssft train``, where a fit that is impossible
(no good parts) is said in one line and does not fail the training.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from defectssft_line import argtypes
from defectssft_line.novelty import ON_NOVEL_CHOICES

if TYPE_CHECKING:  # defectssft.anomaly imports torch: only inside the commands
    from defectssft.anomaly import AnomalyModel


_rate = argtypes.number(float, lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
FIT_FLIPS_CHOICES = ("none", "h", "v", "hv")  # defectssft.anomaly.FIT_FLIPS (torch-free here)
_percentile = argtypes.number(float, lambda v: 0 <= v <= 100, "between 0 and 100")
_smooth = argtypes.number(float, lambda v: 0 <= v <= 8, "between 0 and 8")
_window = argtypes.number(int, lambda v: 0 <= v <= 9, "between 0 and 9")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fit-anomaly",
        help="fit a version's anomaly head on good parts (flags novel defects on the line)",
        description="Fit a good-part memory bank for a model version (done after `train` too); "
        "the next export carries anomaly_score and anomaly_map.",
    )
    p.add_argument("project", help="project folder")
    p.add_argument(
        "--model", metavar="VERSION", help="model version (default: production, else newest)"
    )
    p.add_argument(
        "--bank-mb",
        type=argtypes.positive_float,
        default=None,
        help="largest memory bank in MB (default 20); a larger one is subsampled",
    )
    p.add_argument(
        "--novel-rate",
        type=_rate,
        default=None,
        help="share of held-out good parts allowed above the threshold (default 0.01)",
    )
    p.add_argument(
        "--smooth",
        type=_smooth,
        default=None,
        metavar="SIGMA",
        help="Gaussian sigma of the anomaly map in patches before its maximum (default 1; 0: none)",
    )
    p.add_argument(
        "--scores",
        default=None,
        metavar="LIST",
        help="novelty scores the head combines: auto (default: the patch bank with an OK class, "
        "the classifier's energy without one) or a comma list of patchcore, knn, mahalanobis, "
        "energy (each normalised on held-out parts, their maximum)",
    )
    p.add_argument(
        "--peak-window",
        type=_window,
        default=None,
        metavar="N",
        help="refine the map's maximum on finer features in a window of N x N patches around "
        "it (the anomaly_peak output the overlays mark; 3 is the measured setting; default 0: "
        "no refinement)",
    )
    p.add_argument(
        "--energy-clip",
        type=_percentile,
        default=None,
        metavar="PCT",
        help="the energy score (projects without an OK class) reads the classifier's layer on "
        "pooled features clipped at this percentile of the fit images' (ReAct; default 90; "
        "0: the plain energy of the logits)",
    )
    p.add_argument(
        "--fit-flips",
        choices=FIT_FLIPS_CHOICES,
        default=None,
        help="also fit the patch bank on mirrored copies of the good images: h (left-right), "
        "v (up-down), hv (both, and both at once); the bank keeps its size (default none)",
    )
    p.add_argument(
        "--on-novel",
        choices=ON_NOVEL_CHOICES,
        default="UNSURE",
        help="verdict of a novel part the classifier passes (default UNSURE)",
    )
    p.set_defaults(func=cmd_fit_anomaly)


def describe(m: AnomalyModel) -> str:
    """What was fitted, how the threshold was calibrated, and how it does on the test split."""
    what = []
    for name in m.scores:
        if name == "patchcore":
            what.append(f"{m.bank.shape[0]} x {m.bank.shape[1]} patch bank")
        elif name == "knn":
            what.append(f"kNN on {m.arrays['knn_bank'].shape[0]} pooled features")
        elif name == "mahalanobis":
            what.append(f"Mahalanobis on {m.arrays['maha_means'].shape[0]} class means")
        elif "energy_clip" in m.arrays:
            clip = float(m.arrays["energy_clip"][0])
            what.append(f"the classifier's energy on features clipped at {clip:.3g} (ReAct)")
        else:
            what.append("the classifier's energy")
    images = "good images" if m.scores == ["patchcore"] else "images"
    if m.fit_flips != "none":
        images += f" (and their mirrored copies, {m.fit_flips})"
    line = (
        f"anomaly head of {m.version}: {' + '.join(what)} ({m.bank_mb:.1f} MB) from "
        f"{m.n_fit_images} {images}; threshold {m.threshold:.4g} "
        f"calibrated on {m.calibrated_on}; novel parts -> {m.on_novel}"
    )
    if m.test:
        rates = ", ".join(f"{c} {r:.1%}" for c, r in m.test["novel_rate"].items())
        line += f"\ntest split ({m.test['n']} parts): novel rate {rates}"
        if m.test.get("auroc_defective_vs_ok") is not None:
            line += f"; anomaly-score AUROC defective vs OK {m.test['auroc_defective_vs_ok']:.3f}"
    return line


def cmd_fit_anomaly(args: argparse.Namespace) -> int:
    from defectssft.anomaly import fit_project_anomaly
    from defectssft.project import Project

    project = Project.open(args.project)
    given = {
        "bank_mb": args.bank_mb,
        "novel_rate": args.novel_rate,
        "smooth": args.smooth,
        "scores": args.scores,
        "peak_window": args.peak_window,
        "fit_flips": args.fit_flips,
        "energy_clip": args.energy_clip,
    }
    model = fit_project_anomaly(
        project,
        args.model,
        **{k: v for k, v in given.items() if v is not None},
        on_novel=args.on_novel,
        say=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(describe(model))
    outputs = "anomaly_score and anomaly_map" if model.has_map else "anomaly_score"
    if model.has_peak:
        outputs = "anomaly_score, anomaly_map and anomaly_peak"
    print(f"export it: defectssft export PROJECT (or promote) carries {outputs}")
    return 0


def fit_and_report(project_path: str, version: str, emit: Any = None) -> AnomalyModel | None:
    """The last step of ``defectssft train``: fit the new version's head, or say in one line
    why not (the training has succeeded either way). ``emit``: the JSON-progress printer."""
    from defectssft.anomaly import fit_project_anomaly
    from defectssft.errors import DefectssftError
    from defectssft.project import Project

    try:
        model = fit_project_anomaly(
            Project.open(project_path),
            version,
            say=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except Exception as e:  # noqa: BLE001 - the training has succeeded: never fail it here
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        if not isinstance(e, DefectssftError):
            reason = f"{type(e).__name__}: {reason}"
        if emit is not None:
            emit({"event": "anomaly", "version": version, "fitted": False, "reason": reason})
        print(f"anomaly head not fitted: {reason}", file=sys.stderr, flush=True)
        return None
    if emit is not None:
        emit({"event": "anomaly", "version": version, "fitted": True, **_brief(model)})
    else:
        print(describe(model), flush=True)
    return model


def _brief(m: AnomalyModel) -> dict[str, Any]:
    return {
        "threshold": m.threshold,
        "scores": list(m.scores),
        "bank_rows": int(m.bank.shape[0]),
        "bank_mb": m.bank_mb,
    }
