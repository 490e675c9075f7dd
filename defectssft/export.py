"""Export a trained model to the one-file ONNX contract read by the line runtime.

The graph takes uint8 NHWC RGB at the model size and does the mean/std normalisation itself;
it outputs ``probs``, ``logits`` and ``defect_score``; preprocessing, classes and thresholds
travel in ``metadata_props["defectssft"]`` (docs/ARCHITECTURE.md, "ONNX contract").

Every export checks itself before it is kept: onnxruntime runs the written file on real
project images and its probabilities are compared with torch (fp32/fp16) or with the fp32
graph (INT8, where the accuracy change is what counts). The file is written under a temporary
name and renamed only when the check passes, so a good model is never replaced by a broken one.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectssft.errors import DefectssftError
from defectssft.fsutil import atomic_path
from defectssft.inspection import (
    InspectionModel,
    ModelSpec,
    inspection_model,
    load_images,
    run_torch,
)
from defectssft_line.decision import METADATA_KEY, ThresholdError, Thresholds

OPSET = 17
PRECISIONS = ("fp32", "fp16", "int8")
# Largest |prob(onnxruntime) - prob(torch)| accepted, per precision.
DEFAULT_MAX_PROB_DIFF = {"fp32": 1e-3, "fp16": 2e-2}
DEFAULT_MAX_INT8_DROP = 0.02  # accuracy points (as a fraction) INT8 may lose vs fp32


class ExportError(DefectssftError):
    """An export that could not be written or that failed its own check."""


@dataclass
class ExportResult:
    """What an export wrote and how well the written file matched the reference."""

    path: str
    precision: str
    n_checked: int
    max_prob_diff: float
    top1_agreement: float
    reference: str  # what the probabilities were compared with: "torch" or "onnx-fp32"
    accuracy_reference: float | None = None
    accuracy_export: float | None = None
    seconds: float = 0.0
    size_bytes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    verdict_check: dict[str, Any] = field(default_factory=dict)  # exportcheck.check_verdicts
    notes: list[str] = field(default_factory=list)
    anomaly: dict[str, Any] | None = None  # the anomaly head's check (defectssft.anomaly)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("metadata")
        return d

    def summary(self) -> str:
        line = (
            f"{self.path} ({self.precision}, {self.size_bytes / 1e6:.1f} MB): checked on "
            f"{self.n_checked} images vs {self.reference}, max |dprob| {self.max_prob_diff:.2e}, "
            f"top-1 agreement {self.top1_agreement:.1%}"
        )
        if self.accuracy_export is not None and self.accuracy_reference is not None:
            line += (
                f", accuracy {self.accuracy_export:.1%} vs {self.accuracy_reference:.1%} "
                f"({(self.accuracy_export - self.accuracy_reference) * 100:+.1f} pt)"
            )
        if self.anomaly is not None:
            line += (
                f"; anomaly head: max |dscore| {self.anomaly['max_rel_diff']:.1e} of its "
                f"threshold, novel agreement {self.anomaly['novel_agreement']:.1%}"
            )
            if self.anomaly.get("peak_agreement") is not None:  # the refined peak's argmax
                line += f", peak within a cell of torch's {self.anomaly['peak_agreement']:.0%}"
        return line


def build_metadata(
    meta: dict[str, Any],
    thresholds: Thresholds | dict[str, float],
    precision: str,
    project: str | None = None,
) -> dict[str, Any]:
    """The ``metadata_props["defectssft"]`` JSON of the ONNX contract (``ModelSpec.onnx_metadata``)."""
    return ModelSpec.from_meta(meta).onnx_metadata(_thresholds(thresholds), precision, project)


def _thresholds(thresholds: Thresholds | dict[str, float]) -> Thresholds:
    if isinstance(thresholds, Thresholds):
        return thresholds
    try:
        return Thresholds(**{k: float(v) for k, v in thresholds.items()})
    except (ThresholdError, TypeError) as e:
        raise ExportError(str(e)) from e


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The defectssft metadata JSON of an exported ONNX file (ExportError if absent)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure: not an ONNX file
        raise ExportError(f"{path}: not a readable ONNX file") from e
    return _metadata_of(model, path)


def _metadata_of(model, path: str | Path) -> dict[str, Any]:
    """The defectssft metadata JSON of a loaded onnx.ModelProto (ExportError if absent)."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ExportError(f"{path}: ONNX file without defectssft metadata")


def rewrite_thresholds(path: str | Path, thresholds: Thresholds) -> dict[str, Any]:
    """Write ``thresholds`` into an exported file's metadata in place (the graph is unchanged);
    returns the new metadata."""
    import onnx

    model = onnx.load(str(path))
    meta = _metadata_of(model, path)
    meta["thresholds"] = thresholds.as_dict()
    _set_metadata(model, meta)
    onnx.save(model, str(path))
    return meta


# --------------------------------------------------------------------------- graph building


def _torch_to_onnx(wrapper: InspectionModel, height: int, width: int):
    """The fp32 ONNX graph of ``wrapper`` (dynamic batch) as an onnx.ModelProto."""
    import onnx

    dummy = torch.zeros((1, height, width, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    names = list(getattr(wrapper, "output_names", ("probs", "logits", "defect_score")))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                (dummy,),
                buf,
                input_names=["image"],
                output_names=names,
                dynamic_axes={n: {0: "batch"} for n in ["image", *names]},
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        except Exception as e:  # noqa: BLE001 - report the exporter's reason on one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"torch.onnx.export failed: {msg}") from e
    return onnx.load_from_string(buf.getvalue())


def _set_metadata(model, metadata: dict[str, Any]) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(metadata)
    model.producer_name = "defectssft"
    model.doc_string = (
        f"defectssft {metadata['backbone']} {metadata['model_version']} ({metadata['precision']}): "
        f"classes {', '.join(metadata['classes'])}"
    )


def _to_fp16(model):
    from onnxruntime.transformers import float16

    # uint8 input and float32 outputs stay as they are; the arithmetic inside runs in fp16.
    return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def int8_excluded_nodes(model) -> list[str]:
    """Nodes kept in float by the INT8 export (``defectssft.int8.excluded_nodes`` of its default
    recipe): the stem conv, the backbone's high-resolution part (up to output stride 8), the
    classifier (Gemm/MatMul) and the anomaly head."""
    from defectssft import int8

    return int8.excluded_nodes(model, int8.DEFAULT)


def _to_int8(fp32_path: Path, out_path: Path, calib: np.ndarray) -> None:
    """The INT8 graph of ``fp32_path`` (``defectssft.int8``: the recipe and why), calibrated on
    ``calib`` (uint8 NHWC project images)."""
    from defectssft import int8

    if len(calib) == 0:
        raise ExportError("INT8 export needs project images to calibrate on; the project has none")
    int8.quantize(fp32_path, out_path, calib, int8.DEFAULT)


# --------------------------------------------------------------------------- checking


def ort_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def line_outputs(
    path: str | Path,
    images: np.ndarray,
    names: Sequence[str] = ("probs", "defect_score"),
    thresholds: Thresholds | None = None,
    batch_size: int = 16,
    session: Any = None,
    meta: dict[str, Any] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The outputs ``names`` (``probs``, ``defect_score`` first, then ``anomaly_score`` if
    wanted) of an exported file on uint8 NHWC ``images`` as the line computes them: for an INT8
    file with the exact re-check, the parts near a verdict edge (at ``thresholds``, default the
    file's own) through its fp32 graph (``defectssft_line.recheck``). With the [N] bool mask of
    those parts (all false for any other file). ``session`` / ``meta``: the file's, already
    opened / read (a caller running it several times), else opened here."""
    from defectssft_line.decision import resolve_thresholds
    from defectssft_line.recheck import RecheckRule, run_rechecked

    names = list(names)
    session = session if session is not None else ort_session(path)
    meta = meta if meta is not None else read_metadata(path)
    rule = RecheckRule.from_metadata(meta)
    t = thresholds or resolve_thresholds(meta.get("thresholds"))
    head = meta.get("anomaly") or {}
    anomaly_thr = float(head["threshold"]) if "anomaly_score" in names and head else None
    if not len(images):
        return [np.zeros(0, np.float32) for _ in names], np.zeros(0, bool)
    if rule is None:
        return run_outputs(session, images, names, batch_size), np.zeros(len(images), bool)
    got, masks = [], []
    for i in range(0, len(images), batch_size):
        outs, mask = run_rechecked(session, images[i : i + batch_size], names, rule,
                                   list(meta["classes"]), meta.get("ok_class"), t,
                                   anomaly_thr)  # fmt: skip
        got.append(outs)
        masks.append(mask)
    return [np.concatenate([g[k] for g in got]) for k in range(len(names))], np.concatenate(masks)


def _add_recheck(
    fp32_path: Path,
    int8_path: Path,
    images: np.ndarray,
    spec: ModelSpec,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Replace the INT8 file at ``int8_path`` with the re-check file (``int8.with_recheck``: it
    and the fp32 graph behind one ``If``), its margin measured on ``images`` (the check and
    calibration images); returns the metadata with ``recheck`` and format_version 2."""
    import onnx

    from defectssft import int8
    from defectssft_line.recheck import RECHECK_FORMAT_VERSION, SAFETY, fit_margin

    names = ["probs", "defect_score"] + (["anomaly_score"] if metadata.get("anomaly") else [])
    fast = run_outputs(ort_session(int8_path), images, names)
    exact = run_outputs(ort_session(fp32_path), images, names)
    classes = list(spec.classes)
    ok = classes.index(spec.ok_class) if spec.ok_class in classes else None
    rule, said = fit_margin(
        fast[0], exact[0], ok,
        fast[2] if len(names) > 2 else None, exact[2] if len(names) > 2 else None,
    )  # fmt: skip
    onnx.save(
        int8.with_recheck(onnx.load(str(fp32_path)), onnx.load(str(int8_path))), str(int8_path)
    )
    entry = {**rule.as_dict(), "safety": SAFETY, "measured_on": len(images), **said}
    entry.pop("n", None)
    return {**metadata, "format_version": RECHECK_FORMAT_VERSION, "recheck": entry}


def run_outputs(
    session, images: np.ndarray, names: Sequence[str], batch_size: int = 16
) -> list[np.ndarray]:
    """The outputs ``names`` of an onnxruntime session on uint8 NHWC images, in batches."""
    got = [
        session.run(list(names), {"image": images[i : i + batch_size]})
        for i in range(0, len(images), batch_size)
    ]
    return [np.concatenate([g[k] for g in got]) for k in range(len(names))]


def run_ort(session, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """probs [N, C] of an onnxruntime session on uint8 NHWC images."""
    if not len(images):
        return np.zeros((0, 0), np.float32)
    return run_outputs(session, images, ["probs"], batch_size)[0]


def _accuracy(probs: np.ndarray, labels: Sequence[int] | None) -> float | None:
    if labels is None or len(labels) == 0:
        return None
    return float(np.mean(probs.argmax(axis=1) == np.asarray(labels)))


def _check(
    path: Path,
    reference: np.ndarray,
    images: np.ndarray,
    labels: Sequence[int] | None,
    precision: str,
    ref_name: str,
    max_prob_diff: float | None,
    max_int8_drop: float,
) -> ExportResult:
    try:
        # INT8 with the re-check: the probabilities the line decides on (near edges: fp32's)
        probs = (
            line_outputs(path, images)[0][0]
            if precision == "int8"
            else run_ort(ort_session(path), images)
        )
    except Exception as e:  # noqa: BLE001 - onnxruntime cannot load/run what we wrote
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"the exported {precision} graph does not run in onnxruntime: {msg}"
        ) from e
    diff = float(np.max(np.abs(probs - reference))) if len(images) else 0.0
    agree = float(np.mean(probs.argmax(1) == reference.argmax(1))) if len(images) else 1.0
    result = ExportResult(
        path=str(path),
        precision=precision,
        n_checked=len(images),
        max_prob_diff=diff,
        top1_agreement=agree,
        reference=ref_name,
        accuracy_reference=_accuracy(reference, labels),
        accuracy_export=_accuracy(probs, labels),
    )
    if not np.all(np.isfinite(probs)):
        raise ExportError(f"the exported {precision} graph produces NaN/inf probabilities")
    if precision == "int8":
        if result.accuracy_export is not None and result.accuracy_reference is not None:
            drop = result.accuracy_reference - result.accuracy_export
            what = f"accuracy drops {drop * 100:.1f} pt"
        else:
            drop = 1.0 - agree
            what = f"top-1 agreement with fp32 is only {agree:.1%}"
        if drop > max_int8_drop + 1e-9:
            raise ExportError(
                f"INT8 export refused: {what} on {len(images)} project images "
                f"(limit {max_int8_drop * 100:.1f} pt); use fp32 or calibrate on more images"
            )
    else:
        bound = DEFAULT_MAX_PROB_DIFF[precision] if max_prob_diff is None else max_prob_diff
        if diff > bound:
            raise ExportError(
                f"export check failed: onnxruntime differs from torch by {diff:.2e} in probability "
                f"(limit {bound:.0e}) on {len(images)} project images"
            )
    return result


# --------------------------------------------------------------------------- public API


def export_onnx(
    model: nn.Module,
    meta: dict[str, Any],
    out_path: str | Path,
    *,
    check_images: np.ndarray,
    check_labels: Sequence[int] | None = None,
    calib_images: np.ndarray | None = None,
    precision: str = "fp32",
    thresholds: Thresholds | dict[str, float] | None = None,
    project: str | None = None,
    max_prob_diff: float | None = None,
    max_int8_drop: float = DEFAULT_MAX_INT8_DROP,
    anomaly: Any = None,
    anomaly_map: bool = True,
    recheck: bool = True,
) -> ExportResult:
    """Write ``out_path`` (one ONNX file) after checking it on ``check_images`` (uint8 NHWC).

    ``anomaly`` (a ``defectssft.anomaly.AnomalyModel``) adds the anomaly head's outputs
    (``anomaly_map`` unless ``anomaly_map`` is False), metadata and check. ``recheck`` (INT8
    only): the file also holds the fp32 graph, which the line runs on the parts near a verdict
    edge (``defectssft_line.recheck``); False: the INT8 graph alone.

    Raises ExportError, leaving any existing ``out_path`` untouched, if the check fails.
    """
    import onnx

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    t0 = time.perf_counter()
    out_path = output_path(out_path)
    spec = ModelSpec.from_meta(meta)
    height, width = spec.input.height, spec.input.width
    images = np.asarray(check_images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise ExportError(
            f"check images must be [N, {height}, {width}, 3] uint8, got {images.shape}"
        )
    try:
        resolved = spec.resolve_thresholds() if thresholds is None else _thresholds(thresholds)
    except ThresholdError as e:
        raise ExportError(str(e)) from e
    metadata = spec.onnx_metadata(resolved, precision, project)
    wrapper = inspection_model(model, spec)
    reference = run_torch(wrapper, images)
    from defectssft import anomaly as _anomaly

    with_head = _anomaly.export_graph(wrapper, anomaly, anomaly_map, metadata)
    graph = _torch_to_onnx(with_head or wrapper, height, width)

    with atomic_path(out_path) as tmp:
        fp32_tmp = tmp.with_suffix(".fp32.tmp")
        try:
            ref_name = "torch"
            if precision == "int8":
                _set_metadata(graph, {**metadata, "precision": "fp32"})
                onnx.save(graph, str(fp32_tmp))
                reference = run_ort(ort_session(fp32_tmp), images)
                ref_name = "onnx-fp32"
                calib = images if calib_images is None else np.asarray(calib_images, dtype=np.uint8)
                _to_int8(fp32_tmp, tmp, calib)
                if recheck:
                    metadata = _add_recheck(
                        fp32_tmp, tmp, np.concatenate([images, calib]), spec, metadata
                    )
                quantized = onnx.load(str(tmp))
                _set_metadata(quantized, metadata)
                onnx.save(quantized, str(tmp))
            else:
                if precision == "fp16":
                    graph = _to_fp16(graph)
                _set_metadata(graph, metadata)
                onnx.save(graph, str(tmp))
            # A failed check raises here: the temporary file goes, a good out_path stays.
            result = _check(
                tmp,
                reference,
                images,
                check_labels,
                precision,
                ref_name,
                max_prob_diff,
                max_int8_drop,
            )
            if with_head is not None:
                result.anomaly = _anomaly.check_export(tmp, with_head, images, precision)
        finally:
            fp32_tmp.unlink(missing_ok=True)
    result.path = str(out_path)
    result.size_bytes = out_path.stat().st_size
    result.seconds = time.perf_counter() - t0
    result.metadata = metadata
    return result


def _project_images(project, max_check: int, max_calib: int):
    """(check paths, check labels or None, calibration paths) from a project's frozen splits."""
    data = project.training_data()
    labeled = data.test or data.val or data.labeled
    check = labeled[:max_check]
    check_paths = [p for p, _ in check]
    labels: list[int] | None = [c for _, c in check]
    if not check_paths:
        check_paths, labels = data.unlabeled[:max_check], None
    pool = [p for p, _ in data.labeled] + list(data.unlabeled)
    rng = np.random.default_rng(0)
    calib = [pool[i] for i in rng.permutation(len(pool))[:max_calib]] if pool else check_paths
    return check_paths, labels, calib


def output_path(out_path: str | Path) -> Path:
    """``out_path`` as a Path, its folder created (ExportError in one line when it cannot be)."""
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(
            f"{out_path.parent}: cannot create the output folder ({e.strerror})"
        ) from e
    return out_path


def default_output(model_dir: Path, precision: str) -> Path:
    return model_dir / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")


def export_project_model(
    project,
    version: str | None = None,
    out: str | Path | None = None,
    precision: str = "fp32",
    threshold: float | None = None,
    unsure_low: float | None = None,
    unsure_high: float | None = None,
    max_check: int = 32,
    max_calib: int = 64,
    max_int8_drop: float = DEFAULT_MAX_INT8_DROP,
    anomaly: bool = True,
    anomaly_map: bool = True,
    max_flip_logit: float | None = None,
    recheck: bool = True,
) -> ExportResult:
    """Export a project's model version (default: production, else newest) with its checks
    (``defectssft.exportcheck``: evaluated first if it never was; no verdict may flip: parts on
    a threshold edge widen the UNSURE band, within ``max_flip_logit``, and the widened band is
    stored as the version's operating point unless thresholds were given) and with its anomaly
    head when it has one (``anomaly=False``: without). ``recheck``: ``export_onnx``'s."""
    from defectssft import exportcheck
    from defectssft.anomaly import load_anomaly
    from defectssft.modeling import load_model_file

    record = project.get_model(version)
    note = exportcheck.ensure_evaluated(project, record["version"], threshold is not None)
    record = project.get_model(record["version"])
    model_dir = Path(record["path"])
    model, meta = load_model_file(model_dir / "model.pt")
    meta["version"] = meta.get("version") or record["version"]
    spec = ModelSpec.from_meta(meta)
    try:
        thresholds = spec.resolve_thresholds(
            record.get("metrics"), threshold, unsure_low, unsure_high
        )
    except ThresholdError as e:
        raise ExportError(str(e)) from e
    height, width, bit_depth = spec.input.height, spec.input.width, spec.input.bit_depth
    check_paths, labels, calib_paths = _project_images(project, max_check, max_calib)
    if not check_paths:
        raise ExportError(f"{project.root}: no images to check the export on; import some first")
    roi = spec.input.roi
    out = Path(out or default_output(model_dir, precision))
    if spec.input.tiles is not None:  # tiles: the graph is checked on tiles, then whole parts
        from defectssft.tiling import export_tiled

        return export_tiled(project, record, model, meta, spec, out, precision, thresholds,
                            check_paths, calib_paths, max_int8_drop, recheck=recheck,
                            anomaly=load_anomaly(model_dir) if anomaly else None,
                            anomaly_map=anomaly_map)  # fmt: skip
    check = load_images(check_paths, height, width, bit_depth, roi)
    calib = load_images(calib_paths, height, width, bit_depth, roi) if precision == "int8" else None
    result = exportcheck.checked_export(
        project,
        model,
        meta,
        out,
        thresholds,
        precision,
        check_images=check,
        check_labels=labels,
        calib_images=calib,
        project=project.name,
        max_int8_drop=max_int8_drop,
        anomaly=load_anomaly(model_dir) if anomaly else None,
        anomaly_map=anomaly_map,
        max_flip_logit=exportcheck.MAX_FLIP_LOGIT if max_flip_logit is None else max_flip_logit,
        recheck=recheck,
    )
    result.notes += [note] if note else []
    widened = result.verdict_check.get("widened")
    if widened and threshold is None and unsure_low is None and unsure_high is None:
        t = widened["to"]
        project.set_operating_point(
            record["version"], t["ng"], t["unsure_low"], t["unsure_high"], source="export"
        )
        result.notes.append(
            "stored as the version's operating point: the app and the next export use it "
            "(`defectssft thresholds` shows or changes it)"
        )
    project.update_model_metrics(record["version"], {f"export_{precision}": result.as_dict()})
    return result
