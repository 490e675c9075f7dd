"""One decision everywhere, the anomaly head included: on one project whose version has a head,
the app's operating-point panel, ``defectssft thresholds``, ``evaluate`` and the line runtime
(the real exported file) give the same verdicts of the same parts, and a version whose file
ships without the head (``export --no-anomaly``) is decided without it everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SIZE, add_model, make_project


@pytest.fixture
def headed(tmp_path: Path):
    """A version whose classifier passes every part (fixed OK logits) and whose anomaly head's
    threshold lies between the test parts' middle anomaly scores, operating point [0.4, 0.5)."""
    from defectssft import anomaly as A
    from defectssft.inspection import load_images, load_inspection

    project = make_project(tmp_path / "p", unlabeled=8)
    version = add_model(project, bias=[8.0, -8.0, -8.0])
    head = A.fit_project_anomaly(project, version)
    folder = Path(project.get_model(version)["path"])
    data = project.training_data()
    wrapper, _ = load_inspection(folder / "model.pt")
    images = load_images([p for p, _ in data.test], SIZE, SIZE, 8)
    scores, _ = A.torch_anomaly(head.wrap(wrapper), images)
    ranked = np.sort(scores)
    head.threshold = float((ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2)
    head.save(folder)
    project.set_operating_point(version, 0.5, 0.4, 0.5)
    yield project, version, data
    project.close()


def _counts(verdicts: list[str], labels: list[str]) -> dict[str, int]:
    d = [lab != "ok" for lab in labels]
    return {
        "escapes": sum(v == "OK" and x for v, x in zip(verdicts, d, strict=True)),
        "overkill": sum(v == "NG" and not x for v, x in zip(verdicts, d, strict=True)),
        "unsure": verdicts.count("UNSURE"),
    }


def test_panel_thresholds_evaluate_and_line_agree_with_the_head(headed, qtbot, capsys, tmp_path):
    from defectssft.cli import main
    from defectssft.evaluate import evaluate_project_model
    from defectssft.export import export_project_model
    from defectssft_gui.operating_panel import OperatingPointDialog
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    project, version, data = headed
    ev = evaluate_project_model(project, version, report=False)
    labels = [data.classes[c] for _, c in data.test]
    res = export_project_model(project, version, out=tmp_path / "line.onnx")
    line = LineModel.load(res.path)
    assert line.novelty is not None
    test_line = [p.verdict for p in line.classify([read_image(p) for p, _ in data.test])]
    assert "UNSURE" in test_line and "OK" in test_line  # the head changes some verdicts
    assert ev.verdicts == test_line
    expected = _counts(test_line, labels)
    stream_line = [p.verdict for p in line.classify([read_image(p) for p in data.unlabeled])]
    stream_review = sum(v != "OK" for v in stream_line)

    assert main(["thresholds", str(project.root), "--model", version, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    test_rates = out["rates"]["parts"]["test"]
    got = {k: test_rates[k]["k"] for k in ("escapes", "overkill", "unsure")}
    assert got == expected
    assert out["rates"]["stream"]["review"]["k"] == stream_review
    assert out["rates"]["stream"]["n"] == len(data.unlabeled)
    assert out["novelty"]["source"].endswith("line.onnx")
    assert sum(out["histogram"]["novel"]) == out["novelty"]["novel_labeled"] + len(
        [v for v in stream_line if v == "UNSURE"]
    )

    dlg = OperatingPointDialog(project, version)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitUntil(lambda: dlg.data is not None and not dlg._tasks, timeout=20000)
    part = dlg.table_rates.parts["test"]
    assert {"escapes": part.escapes.k, "overkill": part.overkill.k, "unsure": part.unsure.k} == (
        expected
    )
    assert dlg.table_rates.stream.review.k == stream_review
    assert "novel" in dlg.novelty.text() and dlg.histogram.hist.novel.sum() > 0
    # wherever the lines are dragged, a novel part the classifier passes stays UNSURE
    dlg.set_thresholds(0.99, 0.99, 0.99)
    assert dlg.table_rates.parts["test"].unsure.k == expected["unsure"]
    dlg.grab().save(str(tmp_path / "panel.png"))


def test_a_file_shipped_without_the_head_is_decided_without_it(headed, qtbot, capsys, tmp_path):
    from defectssft.cli import main
    from defectssft.evaluate import evaluate_project_model
    from defectssft.export import export_project_model
    from defectssft.operating import load_operating_data, rates
    from defectssft.verdicts import VerdictCache, shipped_novelty, shown_anomaly
    from defectssft_line.model import LineModel
    from defectssft_line.preprocess import read_image

    project, version, data = headed
    assert shipped_novelty(project, version).rule is not None  # never exported: the head
    with_head = evaluate_project_model(project, version, report=False).verdicts
    assert "UNSURE" in with_head
    novel_path = data.test[with_head.index("UNSURE")][0]
    _, text = shown_anomaly(project, version, novel_path)  # the app's anomaly-map line
    assert text.endswith(": NOVEL")
    res = export_project_model(project, version, out=tmp_path / "plain.onnx", anomaly=False)
    shipped = shipped_novelty(project, version)
    assert shipped.rule is None and "without its anomaly head" in shipped.source
    _, text = shown_anomaly(project, version, novel_path)
    assert "NOVEL" not in text and "not applied on the line" in text
    line = LineModel.load(res.path)
    test_line = [p.verdict for p in line.classify([read_image(p) for p, _ in data.test])]
    assert set(test_line) == {"OK"}
    assert evaluate_project_model(project, version, report=False).verdicts == test_line
    cache = VerdictCache(project, version)
    assert [cache.get(i) for i in data.test_ids] == test_line
    table = rates(load_operating_data(project, version), line.thresholds)
    assert table.parts["test"].unsure.k == 0
    assert main(["thresholds", str(project.root), "--model", version]) == 0
    assert "anomaly head: not applied" in capsys.readouterr().out
    # the panel's "Export with these thresholds" changes the thresholds, not the head choice
    from defectssft_gui.operating_panel import OperatingPointDialog

    dlg = OperatingPointDialog(project, version)
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: dlg.data is not None and not dlg._tasks, timeout=20000)
    assert "not applied" in dlg.novelty.text()
    with qtbot.waitSignal(dlg.exported, timeout=120000) as sig:
        dlg.export()
    assert LineModel.load(sig.args[0]).novelty is None
    assert shipped_novelty(project, version).rule is None
    # promoted, the version ships as it was exported: production.onnx has no head either
    assert main(["promote", str(project.root), version, "--force"]) == 0
    capsys.readouterr()
    production = Path(project.root) / "exports" / "production.onnx"
    assert LineModel.load(production).novelty is None
    assert shipped_novelty(project, version).source.startswith("exports")
    # exported again with the head: the app follows the newest file
    export_project_model(project, version)
    assert shipped_novelty(project, version).rule is None  # production still ships without
    assert main(["promote", str(project.root), version, "--force"]) == 0
    assert shipped_novelty(project, version).rule is not None
