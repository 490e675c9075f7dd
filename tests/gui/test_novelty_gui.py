"""The app's side of novel parts: the "novel" filter (unlabeled images by anomaly score, most
anomalous first) and View → Anomaly map beside Grad-CAM (the two exclude each other)."""

from __future__ import annotations

from gui_helpers import add_tiny_model


def _fit(window, qtbot):
    from defectssft.anomaly import fit_project_anomaly

    p = window.project
    ids = p.image_ids()
    p.set_labels(ids[:4], "ok")  # good parts to fit on
    version = add_tiny_model(p, input_size=32)
    fit_project_anomaly(p, version)
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    return version, ids


def test_novel_filter_lists_unlabeled_by_anomaly_score(window, qtbot):
    version, ids = _fit(window, qtbot)
    with qtbot.waitSignal(window.rowsLoaded) as sig:
        window.set_filter("novel")
    assert sig.args == [len(ids) - 4]
    rows = [window.model.row(i) for i in range(window.model.total())]
    assert all(r.label is None and r.anomaly is not None for r in rows)
    scores = [r.anomaly for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_novel_filter_is_empty_without_a_head(window, qtbot):
    add_tiny_model(window.project, input_size=32)
    with qtbot.waitSignal(window.rowsLoaded) as sig:
        window.set_filter("novel")
    assert sig.args == [0]


def test_anomaly_map_choice_beside_grad_cam(window, qtbot):
    _fit(window, qtbot)
    anomaly, gradcam = window.anomaly.action, window.actions_by_name["heatmap"]
    view_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    names = [a.text() for a in view_menu.actions()]
    assert names.index("Anomaly map") == names.index(gradcam.text()) + 1
    with qtbot.waitSignal(window.anomaly.ready, timeout=30000):
        anomaly.trigger()
    assert window.viewer.heatmap_visible()
    assert "anomaly score" in window.pred_label.text()
    assert "threshold" in window.pred_label.text()
    gradcam.setChecked(True)  # Grad-CAM chosen: the anomaly map is switched off
    assert not anomaly.isChecked()
    anomaly.trigger()
    assert not gradcam.isChecked()


def test_anomaly_map_of_a_version_without_head_is_one_line(window, qtbot):
    add_tiny_model(window.project, input_size=32)
    with qtbot.waitSignal(window.rowsLoaded):
        window.refresh()
    with qtbot.waitSignal(window.errorShown, timeout=30000):
        window.anomaly.action.trigger()
    assert "has no anomaly head" in window.last_error and "fit-anomaly" in window.last_error
    assert not window.anomaly.action.isChecked()
