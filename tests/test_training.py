"""The training loop, config validation, resume, stop handling and the ``train`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import yaml

from defectssft.cli import main as cli_main
from defectssft.errors import ConfigError, DefectssftError
from defectssft.metrics import classification_metrics
from defectssft.training.config import parse_duration, resolve_config, resolve_for_data
from defectssft.training.data import DataError, SeededSampler, TrainData
from defectssft.training.loop import pseudo_label_accuracy, train
from tests.helpers import REPO, cfg, cli_sets, tiny_data_at, tiny_project


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> TrainData:
    return tiny_data_at(tmp_path_factory.mktemp("imgs"))


@pytest.mark.parametrize(
    "method,extra",
    [
        ("supervised", {}),
        ("fixmatch", {"dist_align": True}),
        ("freematch", {}),
        ("freematch", {"pseudo_from": "ema", "fairness": 0.01}),
    ],
)
def test_each_method_trains_logs_and_evaluates(tiny_data, tmp_path, method, extra):
    rows = []
    result = train(
        cfg(ssl={"method": method, **extra}, train={"eval_every": 4}),
        tiny_data,
        tmp_path / "run",
        progress=rows.append,
        handle_signals=False,
    )
    assert result.status == "completed" and result.step == 4
    assert {"accuracy", "balanced_accuracy", "auroc"} <= set(result.metrics)
    steps = [r for r in rows if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["eta_s"] >= 0 for r in steps)
    if method != "supervised":
        assert all(0.0 <= r["mask"] <= 1.0 for r in steps)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(x)["event"] == "eval" for x in lines)
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("event,step")
    assert (tmp_path / "run" / "last.pt").is_file()
    # 3 validation images a class cannot choose a checkpoint: the final weights ship, no best.pt
    assert not (tmp_path / "run" / "best.pt").exists()
    assert result.weights_from["which"] == "final" and result.weights_from["step"] == 4
    assert "fewer than 10 images" in result.weights_from["why"]


def test_pseudo_label_accuracy_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    truth = torch.tensor([0, 0, 0, 1])  # argmax 0,1,0,1: right, wrong, right, right
    mask = torch.tensor([True, True, False, False])
    assert pseudo_label_accuracy(probs, mask, truth) == {"pl_acc": 0.75, "pl_acc_mask": 0.5}
    assert pseudo_label_accuracy(probs, torch.zeros(4, dtype=torch.bool), truth) == {"pl_acc": 0.75}


def test_validation_auroc_ranks_confidently_ok_parts():
    # float32 p(OK) of 1 - 1e-9 and 1 - 1e-12 both round to 1: scored as 1 - p(OK) the defect
    # (label 1) and the good part would tie (AUROC 0.75); their own order gives 1.0.
    probs = np.array([[1 - 1e-9, 1e-9], [1 - 1e-12, 1e-12], [0.2, 0.8]], dtype=np.float32)
    m = classification_metrics(probs, np.array([1, 0, 1]), ok_index=0)
    assert m["auroc"] == pytest.approx(1.0)
    assert np.isnan(classification_metrics(probs, np.array([0, 0, 0]), ok_index=0)["auroc"])


def test_hidden_unlabeled_truth_logs_pseudo_label_accuracy(tiny_data, tmp_path):
    truth = [i % 2 for i in range(len(tiny_data.unlabeled))]  # how tiny_data_at drew them
    data = dataclasses.replace(tiny_data, unlabeled_truth=truth)
    rows: list[dict] = []
    train(
        cfg(ssl={"method": "freematch"}),
        data,
        tmp_path / "run",
        progress=rows.append,
        handle_signals=False,
    )
    steps = [r for r in rows if r["event"] == "step"]
    assert all(0.0 <= r["pl_acc"] <= 1.0 and 0.0 < r["tau"] < 1.0 for r in steps)
    plain: list[dict] = []  # a project's data has no truth: no pl_acc column
    train(
        cfg(ssl={"method": "freematch"}),
        tiny_data,
        tmp_path / "plain",
        progress=plain.append,
        handle_signals=False,
    )
    assert not any("pl_acc" in r for r in plain)
    with pytest.raises(DataError, match="unlabeled_truth has 3 entries for 12 unlabeled images"):
        train(
            cfg(),
            dataclasses.replace(tiny_data, unlabeled_truth=[0, 1, 0]),
            tmp_path / "bad",
            handle_signals=False,
        )


def _stop_after_checkpoint(at_step: int):
    event = threading.Event()

    def progress(row):
        if row["event"] == "checkpoint" and row["step"] == at_step:
            event.set()

    return event, progress


def test_resume_gives_the_same_next_steps_as_an_uninterrupted_run(tiny_data, tmp_path):
    c = cfg()
    full = train(c, tiny_data, tmp_path / "full", handle_signals=False)
    event, progress = _stop_after_checkpoint(2)
    part = train(
        c, tiny_data, tmp_path / "part", progress=progress, stop_event=event, handle_signals=False
    )
    assert part.status == "interrupted" and part.step == 2
    resumed = train(c, tiny_data, tmp_path / "part", resume=True, handle_signals=False)
    assert resumed.status == "completed" and resumed.step == 4
    for k, v in full.weights.items():
        assert torch.allclose(v.float(), resumed.weights[k].float(), atol=1e-6), k

    # the logged losses of steps 3-4 match too
    def losses(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss_s"] for r in rows if r["event"] == "step"}

    a, b = losses("full"), losses("part")
    assert abs(a[3] - b[3]) < 1e-5 and abs(a[4] - b[4]) < 1e-5


def test_tensorboard_logs_train_and_val_scalars(tiny_data, tmp_path):
    event_acc = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    train(
        cfg(train={"eval_every": 2, "tensorboard": True}),
        tiny_data,
        tmp_path / "run",
        handle_signals=False,
    )
    acc = event_acc.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_u", "train/lr", "val/accuracy", "val/auroc"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("val/accuracy")] == [2, 4]


def test_tensorboard_missing_is_a_one_line_error_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", None
    )  # import fails as if not installed
    with pytest.raises(DefectssftError, match=r"pip install 'defectssft\[tensorboard\]'"):
        train(cfg(train={"tensorboard": True}), tiny_data, tmp_path / "run", handle_signals=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_resume_without_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(DefectssftError, match="nothing to resume"):
        train(cfg(), tiny_data, tmp_path / "empty", resume=True, handle_signals=False)


def test_time_budget_ends_cleanly_with_a_model(tiny_data, tmp_path):
    result = train(
        cfg(train={"max_time": 0.001, "steps": 1000}),
        tiny_data,
        tmp_path / "r",
        handle_signals=False,
    )
    assert result.status == "time_budget" and result.step < 1000
    assert result.weights and (tmp_path / "r" / "last.pt").is_file()


def test_no_labeled_images_is_a_data_error(tiny_data, tmp_path):
    empty = TrainData(classes=["ok", "dent"], labeled=[], unlabeled=tiny_data.unlabeled)
    with pytest.raises(DataError, match="no labeled training images"):
        train(cfg(), empty, tmp_path / "r", handle_signals=False)


def test_unreadable_labeled_image_is_a_one_line_error(tiny_data, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    data = TrainData(classes=["ok", "dent"], labeled=[(str(broken), 0)] * 4, bit_depth=8)
    with pytest.raises(DataError, match="broken.png"):
        train(cfg(ssl={"method": "supervised"}), data, tmp_path / "r", handle_signals=False)


def test_sampler_is_positional_and_shards_ranks():
    full = SeededSampler(10, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(25)]
    later = iter(SeededSampler(10, seed=3, start=7))
    assert [next(later) for _ in range(5)] == stream[7:12]
    r0, r1 = (
        iter(SeededSampler(10, 3, rank=0, world=2)),
        iter(SeededSampler(10, 3, rank=1, world=2)),
    )
    assert [next(r0) for _ in range(3)] == stream[0:6:2]
    assert [next(r1) for _ in range(3)] == stream[1:6:2]
    assert sorted(i for i, _ in stream[:10]) == list(range(10))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "sets,message",
    [
        (["train.stepz=3"], "unknown key 'train.stepz'"),
        (["trian.steps=3"], "unknown section 'trian'"),
        (["train.steps=abc"], "train.steps must be an integer"),
        (["train.steps=0"], "train.steps must be >= 1"),
        (["ssl.method=mixmatch"], "ssl.method must be one of"),
        (["ssl.threshold=1.5"], "ssl.threshold must be between 0.0 and 1.0"),
        (["ssl.dist_align=maybe"], "ssl.dist_align must be true or false"),
        (["train.max_time=eight hours"], "invalid duration"),
        (["train.steps"], "--set expects key=value"),
        (["steps=3"], "--set key must be section.key"),
    ],
)
def test_config_errors_are_one_line(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
        resolve_config(sets=sets)
    assert "\n" not in str(e.value)


def test_auto_recipe_follows_the_kind_of_project_and_lr_follows_the_optimizer():
    c = resolve_config()
    assert (c["train"]["optimizer"], c["ssl"]["pseudo_from"], c["train"]["lr"]) == (
        "auto",
        "auto",
        None,
    )
    ok_ng = resolve_for_data(c, has_ok_class=True)
    assert (ok_ng["train"]["optimizer"], ok_ng["ssl"]["pseudo_from"]) == ("sgd", "ema")
    assert (ok_ng["train"]["lr"], ok_ng["train"]["weight_decay"]) == (0.03, 5e-4)
    types = resolve_for_data(c, has_ok_class=False)
    assert (types["train"]["optimizer"], types["ssl"]["pseudo_from"]) == ("adamw", "student")
    assert (types["train"]["lr"], types["train"]["weight_decay"]) == (3e-4, 0.01)
    assert c["train"]["optimizer"] == "auto"  # the input is not modified
    # what the user sets wins; an empty lr follows the optimizer chosen
    c = resolve_for_data(
        resolve_config(sets=["train.optimizer=sgd", "ssl.pseudo_from=student"]), False
    )
    assert (c["train"]["optimizer"], c["ssl"]["pseudo_from"], c["train"]["lr"]) == (
        "sgd",
        "student",
        0.03,
    )
    c = resolve_config(sets=["train.optimizer=adamw", "train.lr=0.001", "train.weight_decay=0"])
    assert (c["train"]["lr"], c["train"]["weight_decay"]) == (0.001, 0.0)
    assert (
        resolve_for_data(resolve_config(sets=["train.ema_decay=0"]), True)["ssl"]["pseudo_from"]
        == "student"
    )
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        resolve_config(sets=["train.lr=fast"])


def test_config_files_presets_and_durations(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 7\nssl:\n  method: freematch\n")
    c = resolve_config(preset="quick", config_file=f, sets=["train.lr=0.1", "train.max_time=1.5h"])
    assert c["train"]["steps"] == 7 and c["ssl"]["method"] == "freematch"
    assert c["train"]["lr"] == 0.1 and c["train"]["max_time"] == 5400.0
    assert c["input"]["height"] == 96  # from the preset
    assert (
        parse_duration("8h") == 28800
        and parse_duration("90m") == 5400
        and parse_duration(None) is None
    )
    assert resolve_config(preset="overnight")["train"]["max_time"] == 8 * 3600
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        resolve_config(preset="fast")
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(config_file=tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        resolve_config(config_file=bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        resolve_config(config_file=listy)


# ----------------------------------------------------------------------------- project + CLI


def test_train_command_writes_a_registered_model_version(tmp_path, capsys):
    from defectssft.modeling import load_model_file

    p = tiny_project(tmp_path)
    rc = cli_main(["train", str(p.root), "--json-progress", *cli_sets(3)])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and out[-1] == {"event": "model", "version": "v0001"}
    assert any(r["event"] == "step" for r in out) and any(r["event"] == "done" for r in out)
    mdir = p.root / "models" / "v0001"
    assert {"model.pt", "config.yaml", "metrics.jsonl", "train.log"} <= {
        x.name for x in mdir.iterdir()
    }
    model, meta = load_model_file(mdir / "model.pt")
    assert meta["classes"] == ["ok", "dent"] and meta["ok_class"] == "ok"
    assert (
        meta["input"] == {"height": 32, "width": 32, "bit_depth": 8} and meta["version"] == "v0001"
    )
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    saved = yaml.safe_load((mdir / "config.yaml").read_text())
    assert saved["model"]["name"] == "test_resnet"
    # the version records the recipe as run: auto resolved for a project with an OK class
    assert (saved["train"]["optimizer"], saved["ssl"]["pseudo_from"]) == ("sgd", "ema")
    assert meta["config"] == saved
    assert p.get_model("v0001")["meta"]["data_hash"] == p.training_data().data_hash


def test_train_command_config_error_exits_2(tmp_path, capsys):
    p = tiny_project(tmp_path)
    assert cli_main(["train", str(p.root), "--set", "ssl.method=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ssl.method must be one of") and "\n" not in err
    assert cli_main(["train", str(tmp_path / "missing")]) == 2
    assert cli_main(["train", str(p.root), "--resume"]) == 2
    assert "no unfinished run" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_saves_a_usable_checkpoint_and_resume_finishes(tmp_path, workers):
    p = tiny_project(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "defectssft",
        "train",
        str(p.root),
        "--json-progress",
        *cli_sets(100000),
        "--set",
        f"train.num_workers={workers}",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            if json.loads(line)["event"] == "step":
                # as a service manager stops it: the whole group, loader workers included
                os.killpg(proc.pid, signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert '"event": "stopped"' in out
    runs = list((p.root / "runs").iterdir())
    ck = torch.load(runs[0] / "last.pt", map_location="cpu", weights_only=True)
    assert 1 <= ck["step"] < 100000 and ck["model"]
    assert not (p.root / "models" / "v0001").exists()
    rc = cli_main(["train", str(p.root), "--resume", runs[0].name, "--max-time", "0.001s"])
    assert rc == 0 and (p.root / "models" / "v0001" / "model.pt").is_file()


def test_print_config_and_bad_max_time(tmp_path, capsys):
    p = tiny_project(tmp_path)
    assert (
        cli_main(["train", str(p.root), "--preset", "quick", "--set", "ssl.mu=5", "--print-config"])
        == 0
    )
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["ssl"]["mu"] == 5 and shown["input"]["height"] == 96
    assert cli_main(["train", str(p.root), "--max-time", "soon"]) == 2
    assert "invalid duration 'soon'" in capsys.readouterr().err


def test_user_errors_before_training_are_one_line(tiny_data, tmp_path):
    one_class = TrainData(classes=["ok"], labeled=tiny_data.labeled[:2])
    with pytest.raises(DataError, match="need at least 2 classes"):
        train(cfg(), one_class, tmp_path / "a", handle_signals=False)
    if not torch.cuda.is_available():
        with pytest.raises(DefectssftError, match="no CUDA GPU"):
            train(cfg(train={"device": "cuda"}), tiny_data, tmp_path / "b", handle_signals=False)


def test_resume_after_the_classes_changed_is_refused(tiny_data, tmp_path):
    train(cfg(train={"steps": 1}), tiny_data, tmp_path / "r", handle_signals=False)
    renamed = TrainData(**{**tiny_data.__dict__, "classes": ["good", "dent"]})
    with pytest.raises(DefectssftError, match="classes changed"):
        train(cfg(train={"steps": 2}), renamed, tmp_path / "r", resume=True, handle_signals=False)
