"""The anomaly head (``defectssft.anomaly``): fit on good parts, bounded bank, storage without
pickle, the exported graph's new outputs checked against torch, ``fit-anomaly`` and its bad
inputs, and ``train``'s last step that never fails the training."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defectssft.anomaly import (
    BANK_FILE,
    MAX_SCORE_DIFF,
    META_FILE,
    AnomalyError,
    AnomalyModel,
    bank_rows,
    calibrate_threshold,
    fit_project_anomaly,
    greedy_coreset,
    load_anomaly,
)
from defectssft.cli import main
from defectssft.export import export_onnx, export_project_model, read_metadata
from defectssft.inspection import inspection_model
from defectssft.project import Project
from tests.helpers import CLASSES, SIZE, add_model, make_project, random_images, tiny_meta
from tests.helpers import tiny_model as make_tiny


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomaly")
    project = make_project(root)
    version = add_model(project)
    model = fit_project_anomaly(project, version, peak_window=3)  # with the refined peak
    return project, version, model


def test_greedy_coreset_covers_every_cluster():
    rng = np.random.default_rng(0)
    clusters = [rng.normal(c, 0.01, (200, 4)) for c in (0.0, 5.0, -5.0)]
    x = np.concatenate(clusters).astype(np.float32)
    chosen = greedy_coreset(x, 3)
    assert len(set(chosen.tolist())) == 3
    assert sorted(int(i) // 200 for i in chosen) == [0, 1, 2]
    assert len(greedy_coreset(x, 10_000)) == len(x)


def test_bank_rows_respects_the_budget_and_the_ratio():
    assert bank_rows(100_000, 100, bank_mb=20, ratio=0.01, min_bank=1024) == 1024
    assert bank_rows(1_000_000, 100, bank_mb=20, ratio=0.1, min_bank=1024) == 50_000  # 20 MB
    assert bank_rows(500, 100, bank_mb=20, ratio=0.01, min_bank=1024) == 500


def test_threshold_passes_the_held_out_parts_by_the_fp32_checks_margin():
    scores = np.array([0.1, 0.3, 0.2])
    thr = calibrate_threshold(scores)
    # a file whose scores pass the fp32 export check cannot make the 0.3 part novel
    assert thr >= 0.3 * (1 + MAX_SCORE_DIFF["fp32"]) and thr == pytest.approx(0.3, rel=1e-2)
    # normalised scores: the margin is of their unit (1) when the threshold is smaller
    thr_n = calibrate_threshold(np.array([-0.2, 0.05]), normalised=True)
    assert 0.05 + MAX_SCORE_DIFF["fp32"] <= thr_n < 0.05 + 2 * MAX_SCORE_DIFF["fp32"]


def test_fit_stores_a_head_loaded_without_pickle(fitted):
    project, version, model = fitted
    folder = Path(project.get_model(version)["path"])
    assert (folder / BANK_FILE).is_file() and (folder / META_FILE).is_file()
    again = load_anomaly(folder)
    assert again is not None and np.array_equal(again.bank, model.bank)
    assert again.threshold == model.threshold > 0
    assert again.map_size == [SIZE // 8, SIZE // 8]
    info = json.loads((folder / META_FILE).read_text())
    assert info["n_fit_images"] >= 1 and info["calibrated_on"]
    assert project.get_model(version)["metrics"]["anomaly"]["threshold"] == model.threshold


def test_a_pickled_or_broken_bank_is_refused(tmp_path, fitted):
    _, _, model = fitted
    model.save(tmp_path)
    with open(tmp_path / BANK_FILE, "wb") as f:
        np.savez(f, bank=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(AnomalyError, match="unreadable anomaly head"):
        load_anomaly(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(AnomalyError, match="fit-anomaly"):
        load_anomaly(tmp_path)
    assert load_anomaly(tmp_path / "nothing") is None


def test_bank_over_budget_is_subsampled_and_said(tmp_path):
    project = make_project(tmp_path)
    version = add_model(project)
    said: list[str] = []
    m = fit_project_anomaly(project, version, bank_mb=0.001, say=said.append)
    assert m.bank.nbytes <= 1000 + 4 * m.bank.shape[1]
    assert "coreset of" in m.subsampled and "budget" in m.subsampled
    assert any("coreset of" in s for s in said)


def test_combined_graph_keeps_the_classifier_outputs(fitted):
    _, _, model = fitted
    tiny = make_tiny()
    ins = inspection_model(tiny, tiny_meta())
    graph = model.wrap(ins)
    x = torch.from_numpy(random_images(4))
    with torch.inference_mode():
        p0, l0, s0 = ins(x)
        p1, l1, s1, a, amap, peak = graph(x)
    assert torch.equal(p0, p1) and torch.equal(l0, l1) and torch.equal(s0, s1)
    assert a.shape == (4,) and amap.shape == (4, SIZE // 8, SIZE // 8)
    assert torch.allclose(a, amap.flatten(1).max(1).values)
    assert peak.shape == (4, 2)  # (x, y) in input pixels, inside the image
    assert bool(((peak >= 0) & (peak <= SIZE)).all())


def test_an_unlike_image_scores_above_the_threshold(fitted):
    project, _, model = fitted
    graph = model.wrap(inspection_model(make_tiny(), tiny_meta()))
    odd = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    odd[:, :, :, 0] = 255  # a saturated red part, unlike the gray fit images
    with torch.inference_mode():
        score = float(graph(torch.from_numpy(odd))[3][0])
    assert score >= model.threshold


def test_export_with_the_head_matches_torch(tmp_path, fitted):
    import onnxruntime as ort

    _, _, model = fitted
    out = tmp_path / "m.onnx"
    res = export_onnx(
        make_tiny(), tiny_meta("v0001"), out, check_images=random_images(5), anomaly=model
    )
    assert res.anomaly is not None and res.anomaly["max_rel_diff"] < 1e-3
    assert "anomaly head" in res.summary()
    meta = read_metadata(out)
    assert meta["anomaly"]["threshold"] == pytest.approx(model.threshold)
    assert meta["anomaly"]["on_novel"] == "UNSURE" and meta["anomaly"]["map"] == model.map_size
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == [
        "probs", "logits", "defect_score", "anomaly_score", "anomaly_map", "anomaly_peak"
    ]  # fmt: skip
    assert meta["anomaly"]["peak"] is True
    _, _, _, a, amap, peak = sess.run(None, {"image": random_images(3)})
    assert a.shape == (3,) and amap.shape == (3, *model.map_size) and peak.shape == (3, 2)
    assert res.anomaly["peak_agreement"] == 1.0 and "peak within a cell" in res.summary()


def test_export_no_map_and_no_anomaly(tmp_path, fitted):
    import onnxruntime as ort

    project, version, _ = fitted
    res = export_project_model(project, version, out=tmp_path / "a.onnx", anomaly_map=False)
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()][3:] == ["anomaly_score"]  # no map: no peak
    assert read_metadata(res.path)["anomaly"]["map"] is None
    assert "peak" not in read_metadata(res.path)["anomaly"]
    res = export_project_model(project, version, out=tmp_path / "b.onnx", anomaly=False)
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    assert len(sess.get_outputs()) == 3 and "anomaly" not in read_metadata(res.path)


def test_version_without_head_exports_and_runs_as_before(tmp_path):
    from defectssft_line.model import LineModel

    project = make_project(tmp_path)
    version = add_model(project)
    res = export_project_model(project, version)
    assert res.anomaly is None and "anomaly" not in res.metadata
    line = LineModel.load(res.path)
    assert line.novelty is None
    pred = line.classify([random_images(1)[0]])[0]
    assert pred.anomaly_score is None and pred.novel is False


def test_exported_head_flags_a_novel_part_on_the_line(tmp_path, fitted):
    from defectssft_line.model import LineModel

    project, version, model = fitted
    res = export_project_model(project, version, out=tmp_path / "m.onnx")
    line = LineModel.load(res.path)
    assert line.novelty is not None and line.novelty.threshold == pytest.approx(model.threshold)
    odd = np.zeros((SIZE, SIZE, 3), np.uint8)
    odd[:, :, 2] = 255  # BGR red, as decoded from a file
    pred = line.classify([odd])[0]
    assert pred.novel is True and pred.anomaly_score >= model.threshold
    assert pred.anomaly_map.shape == tuple(model.map_size)


def _empty_project(root: Path) -> Project:
    """Only defect labels, no OK image and nothing unlabeled: nothing to fit on."""
    p = Project.create(root / "p", classes=CLASSES, ok_class="ok")
    for i in range(4):
        img = np.full((40, 40), 40 * i, np.uint8)
        cv2.imwrite(str(root / f"s{i}.png"), img)
        p.add_image(root / f"s{i}.png", label="scratch")
    return p


def test_nothing_to_fit_is_one_line_and_export_still_works(tmp_path, capsys):
    p = _empty_project(tmp_path)
    version = add_model(p)
    with pytest.raises(AnomalyError, match="no good parts to fit"):
        fit_project_anomaly(p, version)
    assert main(["fit-anomaly", str(p.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (Path(p.get_model(version)["path"]) / META_FILE).exists()
    # the classifier still exports (an explicit threshold: the empty project has nothing to
    # evaluate it on)
    assert main(["export", str(p.root), "--threshold", "0.5"]) == 0


def test_fit_anomaly_cli(tmp_path, capsys):
    p = make_project(tmp_path)
    add_model(p)
    assert main(["fit-anomaly", str(p.root), "--bank-mb", "0.002", "--on-novel", "NG"]) == 0
    out, err = capsys.readouterr()
    assert "anomaly head of v0001" in out and "coreset of" in err
    m = load_anomaly(Path(p.get_model("v0001")["path"]))
    assert m is not None and m.on_novel == "NG"
    assert main(["export", str(p.root)]) == 0
    assert "anomaly head: novel at score >=" in capsys.readouterr().out
    for bad in (["--bank-mb", "0"], ["--novel-rate", "1.5"], ["--on-novel", "OK"]):
        with pytest.raises(SystemExit):
            main(["fit-anomaly", str(p.root), *bad])


def test_train_last_step_reports_and_never_fails(tmp_path, capsys):
    from defectssft.anomaly_cli import fit_and_report

    p = _empty_project(tmp_path)
    version = add_model(p)
    events: list[dict] = []
    assert fit_and_report(str(p.root), version, events.append) is None
    assert events[0]["event"] == "anomaly" and events[0]["fitted"] is False
    assert "anomaly head not fitted: " in capsys.readouterr().err
    ok = make_project(tmp_path / "ok")
    assert fit_and_report(str(ok.root), add_model(ok)) is not None
    assert "anomaly head of v0001" in capsys.readouterr().out


def test_model_meta_round_trip_keeps_fields(fitted):
    _, _, model = fitted
    info = model.info()
    assert info["bank_rows"] == model.bank.shape[0] and info["format"] == "defectssft-anomaly"
    again = AnomalyModel(bank=model.bank, threshold=model.threshold)
    assert again.onnx_metadata(with_map=False)["map"] is None


def test_fit_scores_unlabeled_images_for_the_novel_filter(fitted):
    from defectssft.novel_scores import load_scores
    from defectssft.queries import fetch_rows

    project, version, _ = fitted
    scores = load_scores(Path(project.get_model(version)["path"]))
    unlabeled = project.training_data().unlabeled_ids
    assert set(scores) == set(unlabeled) and len(scores) == 6
    rows = fetch_rows(project, "novel", version=version)
    assert [r.image_id for r in rows] == sorted(scores, key=lambda i: -scores[i])
    assert all(r.label is None and r.anomaly == scores[r.image_id] for r in rows)
    assert project.get_model(version)["metrics"]["anomaly"]["scored_unlabeled"] == 6


def test_fit_reports_the_test_split(fitted, capsys):
    from defectssft.anomaly_cli import describe

    project, version, model = fitted
    test = project.get_model(version)["metrics"]["anomaly"]["test"]
    assert test["n"] == len(project.training_data().test)
    assert set(test["novel_rate"]) <= set(CLASSES)
    assert all(0.0 <= r <= 1.0 for r in test["novel_rate"].values())
    assert 0.0 <= test["auroc_defective_vs_ok"] <= 1.0
    assert "test split" in describe(model) and "AUROC" in describe(model)


@pytest.mark.slow
def test_train_fits_the_head_as_its_last_step(tmp_path, capsys):
    from tests.helpers import cli_sets, tiny_project

    p = tiny_project(tmp_path)
    assert main(["train", str(p.root), "--json-progress", *cli_sets(2)]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    fitted = [r for r in out if r["event"] == "anomaly"]
    assert fitted and fitted[0]["fitted"] is True and fitted[0]["version"] == "v0001"
    assert out[-1] == {"event": "model", "version": "v0001"}  # still the last event
    assert load_anomaly(p.root / "models" / "v0001") is not None
    assert main(["export", str(p.root)]) == 0
    assert "anomaly" in read_metadata(p.root / "models" / "v0001" / "model.onnx")


def test_too_many_patches_are_subsampled_before_the_coreset(tmp_path, monkeypatch):
    import defectssft.anomaly as anomaly

    monkeypatch.setattr(anomaly, "MAX_FIT_PATCHES", 20)
    project = make_project(tmp_path)
    m = fit_project_anomaly(project, add_model(project), min_bank=8)
    assert m.bank.shape[0] == 8 and m.n_fit_patches > 20
    assert f"a random 20 of {m.n_fit_patches}" in m.subsampled


def test_train_last_step_survives_an_unexpected_failure(tmp_path, monkeypatch, capsys):
    import defectssft.anomaly as anomaly
    from defectssft.anomaly_cli import fit_and_report

    def boom(*_a, **_k):
        raise RuntimeError("shape mismatch\nsecond line")

    monkeypatch.setattr(anomaly, "fit_project_anomaly", boom)
    p = make_project(tmp_path)
    assert fit_and_report(str(p.root), add_model(p)) is None
    err = capsys.readouterr().err
    assert err == "anomaly head not fitted: RuntimeError: shape mismatch\n"


def test_nearest_distances_in_chunks_equal_one_pass():
    from defectssft.anomaly import nearest_distances

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(5, 3, 4, 6)).astype(np.float32)
    bank = rng.normal(size=(7, 6)).astype(np.float32)
    whole = nearest_distances(feats, bank)
    assert whole.shape == (5, 3, 4)
    np.testing.assert_allclose(nearest_distances(feats, bank, max_floats=1), whole, rtol=1e-6)
    brute = np.sqrt(((feats[..., None, :] - bank) ** 2).sum(-1)).min(-1)
    np.testing.assert_allclose(whole, brute, rtol=1e-4, atol=1e-5)


def test_a_single_good_image_is_fitted_and_says_so(tmp_path):
    p = _empty_project(tmp_path)
    cv2.imwrite(str(tmp_path / "good.png"), np.full((40, 40), 123, np.uint8))
    p.add_image(tmp_path / "good.png", label="ok")
    p.assign_splits(val_fraction=0.0, test_fraction=0.0)
    said: list[str] = []
    m = fit_project_anomaly(p, add_model(p), say=said.append)
    assert m.n_fit_images == 1 and m.n_held_out == 0
    assert m.calibrated_on == "the single fit image (nothing to hold out)"
    assert any("only one good image" in s for s in said)


def test_the_map_is_smoothed_by_a_gaussian_with_edge_padding():
    from defectssft.anomaly import AnomalyHead, gaussian_taps, nearest_distances

    rng = np.random.default_rng(2)
    feats = rng.normal(size=(2, 9, 11, 6)).astype(np.float32)
    bank = rng.normal(size=(5, 6)).astype(np.float32)
    raw = nearest_distances(feats, bank)
    smooth = nearest_distances(feats, bank, smooth=1.0)
    taps = gaussian_taps(1.0)
    assert len(taps) == 7 and taps.sum() == pytest.approx(1.0)
    ref = [cv2.sepFilter2D(m, -1, taps, taps, borderType=cv2.BORDER_REPLICATE) for m in raw]
    np.testing.assert_allclose(smooth, np.stack(ref), rtol=1e-4, atol=1e-5)
    # one stray patch: the smoothed maximum is lower than the raw one, its neighbours rise
    spike = np.zeros((1, 9, 11, 6), np.float32)
    spike[0, 4, 5] = 10.0
    zero_bank = np.zeros((1, 6), np.float32)
    score, amap = AnomalyHead(zero_bank, 1.0)(torch.from_numpy(spike).permute(0, 3, 1, 2))
    peak = 10.0 * np.sqrt(6)  # the spike's distance to the bank
    assert float(score[0]) == pytest.approx(peak * gaussian_taps(1.0)[3] ** 2, rel=1e-5)
    assert float(amap[0, 4, 6]) > 0 and float(amap[0, 0, 0]) < 1e-3
    assert gaussian_taps(0.0).tolist() == [1.0]


def test_fit_smooths_by_default_and_old_heads_stay_unsmoothed(tmp_path, fitted):
    from defectssft.anomaly import DEFAULT_SMOOTH

    _, _, model = fitted
    assert model.smooth == DEFAULT_SMOOTH > 0
    model.save(tmp_path)
    info = json.loads((tmp_path / META_FILE).read_text())
    assert info["smooth"] == DEFAULT_SMOOTH and info["format_version"] == 4
    assert info["scores"] == ["patchcore"] and info["norms"] == {}
    for key in ("smooth", "scores", "norms"):  # a head fitted before smoothing existed
        info.pop(key)
    info["format_version"] = 1
    (tmp_path / META_FILE).write_text(json.dumps(info))
    old = load_anomaly(tmp_path)
    assert old is not None and old.smooth == 0.0 and old.head().patch.radius == 0
    assert old.scores == ["patchcore"] and old.norms == {}
    for bad in ("1", -1.0, 100.0, True):
        info["smooth"] = bad
        (tmp_path / META_FILE).write_text(json.dumps(info))
        with pytest.raises(AnomalyError, match="smooth"):
            load_anomaly(tmp_path)


def test_fit_anomaly_smooth_flag(tmp_path, capsys):
    p = make_project(tmp_path)
    add_model(p)
    assert main(["fit-anomaly", str(p.root), "--smooth", "0"]) == 0
    m = load_anomaly(Path(p.get_model("v0001")["path"]))
    assert m is not None and m.smooth == 0.0
    for bad in (["--smooth", "-1"], ["--smooth", "9"], ["--smooth", "x"]):
        with pytest.raises(SystemExit):
            main(["fit-anomaly", str(p.root), *bad])
    assert "between 0 and 8" in capsys.readouterr().err
    with pytest.raises(AnomalyError, match="smoothing"):
        fit_project_anomaly(p, "v0001", smooth=-0.5)
    assert load_anomaly(Path(p.get_model("v0001")["path"])).smooth == 0.0  # kept


def test_int8_export_keeps_the_head_in_float(tmp_path, fitted):
    import onnx

    from defectssft.export import _to_int8, int8_excluded_nodes

    _, _, model = fitted
    imgs = random_images(8)
    export_onnx(
        make_tiny(), tiny_meta("v0001"), tmp_path / "m.onnx", check_images=imgs, anomaly=model
    )
    head = [n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if "anomaly_head/" in n.name]
    assert {"MatMul", "Add", "ReduceMin", "Conv"} <= {n.op_type for n in head}
    assert {n.name for n in head} <= set(int8_excluded_nodes(onnx.load(str(tmp_path / "m.onnx"))))
    _to_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx", imgs)
    nodes = onnx.load(str(tmp_path / "m8.onnx")).graph.node
    quant = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quant  # the backbone is quantized, the head is not
    assert not [n for n in quant if "anomaly_head" in n.name or "anomaly_head" in n.input[0]]


def _feature_head(rng: np.random.Generator, scores: list[str], norms=None) -> AnomalyModel:
    from defectssft.anomaly import fit_mahalanobis

    pooled = rng.normal(size=(30, 6)).astype(np.float32)
    classes = np.repeat([0, 1, 2], 10)
    arrays = {"knn_bank": pooled, **fit_mahalanobis(pooled, classes)}
    return AnomalyModel(
        bank=np.zeros((0, 0), np.float32),
        threshold=1.0,
        scores=scores,
        norms=norms or {},
        arrays=arrays,
    )


def test_feature_scores_are_the_textbook_formulas():
    from defectssft.anomaly import ScoreHead, ledoit_wolf

    rng = np.random.default_rng(0)
    m = _feature_head(rng, ["knn", "mahalanobis", "energy"])
    x = rng.normal(size=(5, 6)).astype(np.float32)
    logits = rng.normal(size=(5, 3)).astype(np.float32)
    head = ScoreHead(m)
    with torch.inference_mode():
        parts, amap = head.components(None, torch.from_numpy(x), torch.from_numpy(logits))
    assert amap is None
    bank = m.arrays["knn_bank"] / np.linalg.norm(m.arrays["knn_bank"], axis=1, keepdims=True)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ bank.T
    np.testing.assert_allclose(parts[0].numpy(), 1 - cos.max(1), atol=1e-5)
    # Mahalanobis: the nearest class mean under the inverse of the shrunk shared covariance
    w = m.arrays["maha_whiten"].astype(np.float64)
    prec = w @ w.T
    means = m.arrays["maha_means"] @ np.linalg.inv(w) + m.arrays["maha_centre"]
    d2 = np.stack([np.einsum("ni,ij,nj->n", x - mu, prec, x - mu) for mu in means], 1)
    np.testing.assert_allclose(parts[1].numpy(), np.sqrt(d2.min(1)), rtol=1e-3)
    lse = np.log(np.exp(logits).sum(1))
    np.testing.assert_allclose(parts[2].numpy(), -lse, atol=1e-5)
    cov = ledoit_wolf(rng.normal(size=(4, 10)))  # fewer rows than dims: still invertible
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_normalised_scores_combine_by_their_maximum():
    from defectssft.anomaly import ScoreHead, combine

    rng = np.random.default_rng(1)
    norms = {"mahalanobis": [2.0, 4.0], "energy": [-3.0, 0.5]}
    m = _feature_head(rng, ["mahalanobis", "energy"], norms)
    x = torch.from_numpy(rng.normal(size=(4, 6)).astype(np.float32))
    logits = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
    with torch.inference_mode():
        (maha, en), _ = ScoreHead(m).components(None, x, logits)
        score, _ = ScoreHead(m)(None, x, logits)
    want = np.maximum((maha.numpy() - 2.0) / 4.0, (en.numpy() + 3.0) / 0.5)
    np.testing.assert_allclose(score.numpy(), want, rtol=1e-5)
    raw = {"mahalanobis": maha.numpy(), "energy": en.numpy()}
    np.testing.assert_allclose(combine(m, raw), want, rtol=1e-5)


def test_scores_flag_is_checked_and_auto_depends_on_the_ok_class(tmp_path, capsys):
    from defectssft.anomaly import DEFAULT_SCORES_NO_OK, parse_scores

    assert parse_scores("auto", 0) == ["patchcore"] and parse_scores(None, 0) == ["patchcore"]
    assert parse_scores("auto", None) == list(DEFAULT_SCORES_NO_OK)
    assert parse_scores("knn,energy", None) == ["knn", "energy"]
    for bad in ("", "bogus", "knn,knn", "patchcore,"):
        with pytest.raises(AnomalyError, match="comma list"):
            parse_scores(bad, None)
    p = make_project(tmp_path)
    add_model(p)
    assert main(["fit-anomaly", str(p.root), "--scores", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: anomaly scores must be") and len(err.strip().splitlines()) == 1
    assert load_anomaly(Path(p.get_model("v0001")["path"])) is None  # nothing written


def test_feature_head_fits_exports_in_one_graph_and_matches_torch(tmp_path):
    import onnxruntime as ort

    from defectssft_line.model import LineModel

    p = make_project(tmp_path)
    version = add_model(p)
    m = fit_project_anomaly(p, version, scores="patchcore,knn,mahalanobis,energy")
    folder = Path(p.get_model(version)["path"])
    again = load_anomaly(folder)
    assert again.scores == m.scores and set(again.norms) == set(m.scores)
    assert set(again.arrays) == {"knn_bank", "maha_centre", "maha_whiten", "maha_means",
                                 "energy_clip", "energy_w", "energy_b"}  # fmt: skip
    assert m.threshold > 0 and m.bank_mb > 0
    res = export_project_model(p, version, out=tmp_path / "m.onnx")
    assert res.anomaly is not None and res.anomaly["max_rel_diff"] < 5e-3
    meta = read_metadata(res.path)
    assert meta["anomaly"]["scores"] == m.scores and meta["anomaly"]["map"] == m.map_size
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()][3:] == ["anomaly_score", "anomaly_map"]
    graph_ops = {n.op_type for n in __import__("onnx").load(res.path).graph.node}
    assert "ReduceLogSumExp" in graph_ops or "LogSumExp" in graph_ops or "Log" in graph_ops
    line = LineModel.load(res.path)
    imgs = random_images(3)
    preds = line.classify(list(imgs[..., ::-1]))
    torch_scores, _ = m.score_images(inspection_model(make_tiny(), tiny_meta()), imgs)
    got = np.array([pr.anomaly_score for pr in preds])
    np.testing.assert_allclose(got, torch_scores, rtol=1e-3, atol=1e-3 * m.threshold)


def test_feature_head_without_the_bank_has_no_map(tmp_path):
    import onnxruntime as ort

    from defectssft.anomaly import anomaly_view

    p = make_project(tmp_path)
    version = add_model(p)
    m = fit_project_anomaly(p, version, scores="energy")
    assert not m.has_map and m.bank.size == 0 and m.norms["energy"][1] > 0
    res = export_project_model(p, version, out=tmp_path / "m.onnx")
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()][3:] == ["anomaly_score"]
    assert read_metadata(res.path)["anomaly"]["map"] is None
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), random_images(1)[0])
    view = anomaly_view(Path(p.get_model(version)["path"]), img)
    assert view.heat.shape == (SIZE, SIZE) and not view.heat.any()


def test_a_feature_head_with_missing_arrays_or_bad_norms_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    m = _feature_head(rng, ["knn", "energy"], {"knn": [0.1, 0.2], "energy": [-1.0, 1.0]})
    m.save(tmp_path)
    assert load_anomaly(tmp_path).scores == ["knn", "energy"]
    info = json.loads((tmp_path / META_FILE).read_text())
    for key, bad in (("norms", {"knn": [0.1, 0.0], "energy": [0, 1]}), ("scores", ["x"])):
        (tmp_path / META_FILE).write_text(json.dumps({**info, key: bad}))
        with pytest.raises(AnomalyError, match="unreadable anomaly head"):
            load_anomaly(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps(info))
    np.savez(tmp_path / BANK_FILE, bank=np.zeros((0, 0), np.float32))  # knn_bank gone
    with pytest.raises(AnomalyError, match="knn_bank"):
        load_anomaly(tmp_path)


def test_feature_arrays_over_the_budget_are_refused(tmp_path):
    p = make_project(tmp_path)
    version = add_model(p)
    with pytest.raises(AnomalyError, match="over the .* MB budget"):
        fit_project_anomaly(p, version, scores="mahalanobis", bank_mb=1e-4)
    assert load_anomaly(Path(p.get_model(version)["path"])) is None


def test_without_an_ok_class_the_head_is_bank_and_energy_fit_on_labels_only(tmp_path):
    from defectssft.modeling import save_model_file
    from defectssft_line.model import LineModel
    from tests.helpers import synthetic_image

    p = Project.create(tmp_path / "p", classes=CLASSES, ok_class=None)
    for k, kind in enumerate(CLASSES * 4):
        path = tmp_path / f"{kind}{k}.png"
        cv2.imwrite(str(path), synthetic_image(kind, k))
        p.add_image(path, label=kind)
    for k in range(5):  # the stream: left out of the fit without an OK class
        path = tmp_path / f"u{k}.png"
        cv2.imwrite(str(path), synthetic_image("scratch", 100 + k))
        p.add_image(path)
    p.assign_splits(val_fraction=0.25, test_fraction=0.25, min_labels=3)
    version, folder = p.new_model_dir()
    meta = {**tiny_meta(version), "ok_class": None}
    save_model_file(folder / "model.pt", make_tiny(), meta)
    p.register_model(version, {k: v for k, v in meta.items() if k != "thresholds"}, {})
    m = fit_project_anomaly(p, version)
    assert m.scores == ["patchcore", "energy"] and set(m.norms) == {"patchcore", "energy"}
    labeled_train = len(p.training_data().labeled)
    assert m.n_fit_images + (m.n_held_out if "held back" in m.calibrated_on else 0) == (
        labeled_train
    )
    assert p.get_model(version)["metrics"]["anomaly"]["fit_unlabeled"] == 0
    from defectssft.anomaly_cli import describe

    said = describe(m)
    assert "patch bank + the classifier's energy" in said and "from" in said
    res = export_project_model(p, version, out=tmp_path / "m.onnx", threshold=0.5)
    assert read_metadata(res.path)["anomaly"]["scores"] == ["patchcore", "energy"]
    line = LineModel.load(res.path)
    pred = line.classify([random_images(1)[0]])[0]
    assert pred.anomaly_score is not None and pred.anomaly_map.shape == tuple(m.map_size)
    # the map is in the score's units: its maximum is the bank's part of the score
    assert pred.anomaly_score >= float(pred.anomaly_map.max()) - 1e-4
    with pytest.raises(AnomalyError, match="no labeled training images"):
        empty = Project.create(tmp_path / "e", classes=CLASSES, ok_class=None)
        cv2.imwrite(str(tmp_path / "e.png"), synthetic_image("ok", 1))
        empty.add_image(tmp_path / "e.png")
        v2, f2 = empty.new_model_dir()
        save_model_file(f2 / "model.pt", make_tiny(), {**tiny_meta(v2), "ok_class": None})
        empty.register_model(v2, {k: v for k, v in meta.items() if k != "thresholds"}, {})
        fit_project_anomaly(empty, v2)


# --------------------------------------------------------------------------- the refined peak


def _peak_head(window: int = 3, smooth: float = 0.0):
    """A PeakHead on a 4 x 4 coarse map, an 8 x 8 fine grid of 32 x 32 input pixels (4 px per
    fine cell), with a bank of one zero feature (distance = the feature's norm)."""
    from defectssft.anomaly import PeakHead

    return PeakHead(np.zeros((1, 2), np.float32), (4, 4), (8, 8), (32, 32), window, smooth)


def _spike(y: int, x: int, value: float = 5.0, at: tuple | None = None) -> torch.Tensor:
    fine = torch.zeros(1, 2, 8, 8)
    fine[0, 0, y, x] = value
    if at is not None:  # a second, weaker spike
        fine[0, 0, at[0], at[1]] = value / 2
    return fine


def test_peak_lands_on_the_fine_maximum_inside_the_window():
    head = _peak_head()
    amap = torch.zeros(1, 4, 4)
    amap[0, 1, 2] = 1.0  # coarse cell (1, 2): fine rows 2-3, cols 4-5; window rows 0-5, cols 2-7
    with torch.inference_mode():
        peak = head(amap, _spike(3, 6))[0]
        # a stronger spike outside the window is not seen
        far = _spike(3, 6, at=(7, 0))
        far[0, 0, 7, 0] = 50.0
        peak_far = head(amap, far)[0]
    # cell (3, 6) -> centre x = 6.5 * 4, y = 3.5 * 4; an isolated spike: no sub-cell shift
    assert peak.tolist() == [26.0, 14.0]
    assert peak_far.tolist() == [26.0, 14.0]


@pytest.mark.parametrize(("cy", "cx", "fy", "fx"), [(0, 0, 0, 0), (3, 3, 7, 7), (0, 3, 0, 7)])
def test_window_at_the_maps_edge_stays_inside_the_grid(cy, cx, fy, fx):
    head = _peak_head()
    amap = torch.zeros(2, 4, 4)
    amap[:, cy, cx] = 1.0
    with torch.inference_mode():
        sy, sx = head.window_start(amap)
        peak = head(amap, _spike(fy, fx).expand(2, -1, -1, -1))
    assert 0 <= int(sy[0]) <= 8 - head.k[0] and 0 <= int(sx[0]) <= 8 - head.k[1]
    assert peak[0].tolist() == [(fx + 0.5) * 4, (fy + 0.5) * 4] == peak[1].tolist()


def test_peak_between_cells_moves_toward_the_stronger_neighbour():
    head = _peak_head()
    amap = torch.zeros(1, 4, 4)
    amap[0, 1, 1] = 1.0
    fine = _spike(3, 3)
    fine[0, 0, 3, 4] = 4.0  # almost as strong to the right: the vertex lies right of cell 3
    with torch.inference_mode():
        x, y = head(amap, fine)[0].tolist()
    assert 3.5 * 4 < x < 4.0 * 4 and y == 3.5 * 4


def test_window_as_large_as_the_grid_and_smoothing_run():
    head = _peak_head(window=9, smooth=1.0)  # clipped to the 8 x 8 grid
    assert head.k == (8, 8)
    amap = torch.zeros(1, 4, 4)
    amap[0, 2, 2] = 1.0
    with torch.inference_mode():
        x, y = head(amap, _spike(6, 1))[0].tolist()
    assert abs(x - 1.5 * 4) <= 2 and abs(y - 6.5 * 4) <= 2


def test_head_without_peak_exports_without_the_output(tmp_path, fitted):
    """A head fitted before the peak (format 3: no ``peak``) exports and loads as before."""
    from dataclasses import replace

    import onnxruntime as ort

    _, _, model = fitted
    old = replace(model, peak={}, arrays={})
    old.save(tmp_path)
    info = json.loads((tmp_path / META_FILE).read_text())
    info.pop("peak")
    info["format_version"] = 3
    (tmp_path / META_FILE).write_text(json.dumps(info))
    again = load_anomaly(tmp_path)
    assert again is not None and not again.has_peak
    out = tmp_path / "m.onnx"
    export_onnx(make_tiny(), tiny_meta("v0001"), out, check_images=random_images(3), anomaly=again)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()][3:] == ["anomaly_score", "anomaly_map"]
    assert "peak" not in read_metadata(out)["anomaly"]


@pytest.mark.parametrize(
    ("peak", "arrays", "says"),
    [
        ({"indices": [1, 2], "window": 99, "grid": [8, 8], "input": [32, 32]}, True, "window"),
        ({"indices": [], "window": 3, "grid": [8, 8], "input": [32, 32]}, True, "indices"),
        ({"indices": [1, 2], "window": 3, "grid": [8], "input": [32, 32]}, True, "grid"),
        ({"indices": [1, 2], "window": 3, "grid": [8, 8], "input": [32, 32]}, False, "peak_bank"),
        ("yes", True, "peak"),
    ],
)
def test_malformed_peak_is_unreadable_in_one_line(tmp_path, fitted, peak, arrays, says):
    _, _, model = fitted
    model.save(tmp_path)
    info = json.loads((tmp_path / META_FILE).read_text())
    info["peak"] = peak
    (tmp_path / META_FILE).write_text(json.dumps(info))
    if not arrays:
        with np.load(tmp_path / BANK_FILE) as z:
            kept = {k: z[k] for k in z.files if k != "peak_bank"}
        np.savez(tmp_path / BANK_FILE, **kept)
    with pytest.raises(AnomalyError, match=f"unreadable anomaly head.*{says}"):
        load_anomaly(tmp_path)


def test_fit_without_peak_or_without_room_for_its_bank(tmp_path):
    p = make_project(tmp_path)
    version = add_model(p)
    m = fit_project_anomaly(p, version)  # the default: no peak, stored as format 3
    assert not m.has_peak and "peak_bank" not in m.arrays and m.peak == {}
    folder = Path(p.get_model(version)["path"])
    assert json.loads((folder / META_FILE).read_text())["format_version"] == 3
    said: list[str] = []
    tight = fit_project_anomaly(
        p, version, bank_mb=m.bank_mb + 1e-4, peak_window=3, say=said.append
    )
    assert not tight.has_peak and any("peak: not refined" in s for s in said)
    with pytest.raises(AnomalyError, match="peak's window"):
        fit_project_anomaly(p, version, peak_window=12)


def test_fit_anomaly_cli_peak_window_flag(tmp_path, capsys):
    p = make_project(tmp_path)
    version = add_model(p)
    with pytest.raises(SystemExit):
        main(["fit-anomaly", str(p.root), "--peak-window", "12"])
    assert "between 0 and 9" in capsys.readouterr().err
    assert main(["fit-anomaly", str(p.root), "--model", version, "--peak-window", "3"]) == 0
    assert "anomaly_peak" in capsys.readouterr().out
    assert load_anomaly(Path(p.get_model(version)["path"])).has_peak
    assert main(["fit-anomaly", str(p.root), "--model", version]) == 0  # default: none
    assert "anomaly_peak" not in capsys.readouterr().out
    assert not load_anomaly(Path(p.get_model(version)["path"])).has_peak


def test_app_view_rings_the_peak_at_the_images_own_size(tmp_path, fitted):
    from defectssft.anomaly import anomaly_view

    project, version, model = fitted
    folder = Path(project.get_model(version)["path"])
    img = tmp_path / "x.png"
    odd = np.zeros((3 * SIZE, 2 * SIZE, 3), np.uint8)
    odd[:, :, 2] = 255  # unlike the fit images: the map is drawn, so the ring is too
    cv2.imwrite(str(img), odd)
    view = anomaly_view(folder, img)
    assert view.heat.shape == (3 * SIZE, 2 * SIZE) and view.peak is not None
    x, y = view.peak
    assert 0 <= x <= 2 * SIZE and 0 <= y <= 3 * SIZE
    # the same head without the peak: the same heat but for the ring around (x, y)
    import shutil

    old = tmp_path / "old"
    shutil.copytree(folder, old)
    info = json.loads((old / META_FILE).read_text())
    (old / META_FILE).write_text(json.dumps({**info, "peak": {}}))
    plain = anomaly_view(old, img)
    assert plain.peak is None
    ys, xs = np.nonzero(plain.heat != view.heat)
    assert len(ys) and abs(xs.mean() - x) < 3 and abs(ys.mean() - y) < 3


# --------------------------------------------------------------------------- mirrored fit images


def test_flip_images_mirror_as_named():
    from defectssft.anomaly import flip_images

    x = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    assert np.array_equal(flip_images(x, "h"), x[:, :, ::-1])
    assert np.array_equal(flip_images(x, "v"), x[:, ::-1])
    assert np.array_equal(flip_images(x, "hv"), x[:, ::-1, ::-1])
    with pytest.raises(AnomalyError, match="unknown flip"):
        flip_images(x, "d")


def test_mirrored_patches_are_the_mirrored_images_own(fitted):
    from defectssft.anomaly import extract_features, flip_images
    from defectssft.inspection import load_inspection

    project, version, _ = fitted
    ins, _ = load_inspection(Path(project.get_model(version)["path"]) / "model.pt")
    imgs = random_images(3)
    f = extract_features(ins, imgs, flips=("h", "v"))
    per_copy = f.patches.shape[1] * f.patches.shape[2]
    assert f.mirrored.shape == (3, 2 * per_copy, f.patches.shape[-1])
    for i, flip in enumerate(("h", "v")):
        own = extract_features(ins, flip_images(imgs, flip)).patches.reshape(3, per_copy, -1)
        np.testing.assert_allclose(f.mirrored[:, i * per_copy : (i + 1) * per_copy], own, atol=1e-5)
    few = extract_features(ins, imgs, flips=("h", "v", "hv"), mirrored_per_image=5)
    assert few.mirrored.shape == (3, 5, f.patches.shape[-1])
    assert extract_features(ins, imgs).mirrored is None


def test_fit_flips_keep_the_banks_rows_and_draw_from_the_copies(tmp_path):
    project = make_project(tmp_path)
    version = add_model(project)
    plain = fit_project_anomaly(project, version, min_bank=16)
    said: list[str] = []
    m = fit_project_anomaly(project, version, min_bank=16, fit_flips="hv", say=said.append)
    assert m.bank.shape == plain.bank.shape  # the graph costs the same
    assert not np.array_equal(m.bank, plain.bank)  # the coreset chose among the copies too
    assert m.fit_flips == "hv" and "mirrored" in m.subsampled
    assert load_anomaly(Path(project.get_model(version)["path"])).fit_flips == "hv"


def test_fit_flips_bad_value_is_one_line_and_keeps_the_head(tmp_path, capsys):
    from defectssft.anomaly import FIT_FLIPS
    from defectssft.anomaly_cli import FIT_FLIPS_CHOICES

    assert tuple(FIT_FLIPS) == FIT_FLIPS_CHOICES
    p = make_project(tmp_path)
    add_model(p)
    assert main(["fit-anomaly", str(p.root), "--fit-flips", "v"]) == 0
    assert "mirrored copies, v" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit-anomaly", str(p.root), "--fit-flips", "x"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(AnomalyError, match="fit flips must be one of"):
        fit_project_anomaly(p, "v0001", fit_flips="rot")
    folder = Path(p.get_model("v0001")["path"])
    assert load_anomaly(folder).fit_flips == "v"  # kept
    info = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**info, "fit_flips": "rot90"}))
    with pytest.raises(AnomalyError, match="unreadable anomaly head.*fit_flips"):
        load_anomaly(folder)


# --------------------------------------------------------------------------- ReAct energy


def test_react_energy_is_the_classifiers_layer_on_clipped_features():
    from defectssft.anomaly import ScoreHead

    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    x = rng.uniform(0, 4, size=(5, 6)).astype(np.float32)
    logits = torch.from_numpy(x @ w.T + b)

    def energy(clip: float) -> np.ndarray:
        m = _feature_head(rng, ["energy"])
        m.arrays.update(energy_clip=np.array([clip], np.float32), energy_w=w, energy_b=b)
        with torch.inference_mode():
            return ScoreHead(m).components(None, torch.from_numpy(x), logits)[0][0].numpy()

    z = np.minimum(x, 1.5) @ w.T + b
    np.testing.assert_allclose(energy(1.5), -np.log(np.exp(z).sum(1)), atol=1e-5)
    plain = -np.log(np.exp(logits.numpy()).sum(1))
    np.testing.assert_allclose(energy(1e6), plain, atol=1e-5)  # nothing clipped: the energy
    assert not np.allclose(energy(1.5), plain)


def test_fit_clips_the_energy_at_the_fit_percentile_and_0_turns_it_off(tmp_path, capsys):
    p = make_project(tmp_path)
    version = add_model(p)
    m = fit_project_anomaly(p, version, scores="energy")
    clf = make_tiny().get_classifier()
    np.testing.assert_allclose(m.arrays["energy_w"], clf.weight.detach().numpy())
    np.testing.assert_allclose(m.arrays["energy_b"], clf.bias.detach().numpy())
    low = fit_project_anomaly(p, version, scores="energy", energy_clip=50).arrays["energy_clip"]
    assert low[0] < m.arrays["energy_clip"][0]  # the median is below the 90th percentile
    folder = Path(p.get_model(version)["path"])
    assert "energy_clip" not in fit_project_anomaly(p, version, scores="energy",
                                                    energy_clip=0).arrays  # fmt: skip
    assert json.loads((folder / META_FILE).read_text())["format_version"] == 3  # as before
    assert main(["fit-anomaly", str(p.root), "--scores", "energy", "--energy-clip", "90"]) == 0
    assert "clipped at" in capsys.readouterr().out
    for bad in ("-1", "101", "x"):
        with pytest.raises(SystemExit):
            main(["fit-anomaly", str(p.root), "--energy-clip", bad])
    assert "between 0 and 100" in capsys.readouterr().err
    with pytest.raises(AnomalyError, match="percentile 0 to 100"):
        fit_project_anomaly(p, version, energy_clip=150)
    kept = load_anomaly(folder)
    assert "energy_clip" in kept.arrays  # the refused fits left the stored head as it was
    info = json.loads((folder / META_FILE).read_text())
    assert info["format_version"] == 5  # an older reader refuses it rather than misread it
    with np.load(folder / BANK_FILE) as z:
        arrays = {k: z[k] for k in z.files if k != "energy_b"}
    np.savez(folder / BANK_FILE, **arrays)
    with pytest.raises(AnomalyError, match="unreadable anomaly head.*clip arrays"):
        load_anomaly(folder)
