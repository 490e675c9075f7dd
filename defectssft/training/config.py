"""Training configuration: defaults, YAML presets/files, ``--set key=value`` overrides, validation.

A config is a plain nested dict ``{section: {key: value}}`` so it round-trips through YAML and
JSON (it is stored in ``config.yaml`` and inside ``model.pt``). Every key is declared in
``DEFAULTS`` with its type; anything unknown or out of range raises ConfigError with one line.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from defectssft.errors import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {
        "name": "tf_efficientnet_lite0",  # any timm model name
        "weights": "imagenet",  # imagenet | none | path to .pth/.safetensors
        "drop_rate": 0.2,
    },
    "input": {
        "height": 128,
        "width": 128,
        "bit_depth": None,  # None: the project's setting input.bit_depth (default 16)
    },
    "ssl": {
        "method": "freematch",  # supervised | fixmatch | freematch (default: benchmarks/ssl_neu.py)
        "threshold": 0.95,  # fixmatch confidence threshold tau
        "lambda_u": 1.0,
        "mu": 3,  # unlabeled images per labeled image in a step
        "dist_align": True,  # distribution alignment (benchmarks/ssl_kolektor.py: decisive on imbalanced data)
        "dist_align_target": "labeled",  # labeled | uniform
        "fairness": 0.0,  # weight of FreeMatch's self-adaptive fairness term (0 = off)
        "pseudo_from": "auto",  # auto | student | ema: which network labels the weak view (see resolve_for_data)
        "ema_momentum": 0.99,  # running estimates of freematch / DA (benchmarks/ssl_neu.py: 0.999 lagged)
    },
    "augment": {
        "hflip": True,
        "vflip": True,
        "shift": 0.0625,
        "strong_ops": 2,
        "strong_magnitude": 0.9,
        "cutout_max": 0.15,  # max area fraction of the erased rectangle (0 disables)
    },
    "train": {
        "steps": 1000,  # benchmarks/ssl_neu.py: 1000 steps with ssl.ema_momentum 0.99, 3 seeds
        "batch_size": 16,  # labeled images per step (per process)
        "optimizer": "auto",  # auto | adamw | sgd (see resolve_for_data)
        "lr": None,  # None: the optimizer's default in OPTIMIZER_DEFAULTS
        "weight_decay": None,  # None: the optimizer's default in OPTIMIZER_DEFAULTS
        "momentum": 0.9,
        "warmup_steps": 50,
        "grad_clip": 5.0,  # 0 disables
        "ema_decay": 0.99,  # EMA teacher; 0 disables
        "label_smoothing": 0.0,
        "amp": "auto",  # auto (bf16/fp16 on CUDA, off on CPU) | off | bf16 | fp16
        "seed": 0,
        "max_time": None,  # e.g. "8h", "30m", 3600 (seconds); None = no limit
        "eval_every": 50,
        "checkpoint_every": 50,
        "log_every": 10,
        "tensorboard": False,  # also log to TensorBoard (run_dir/tensorboard); needs defectssft[tensorboard]
        "num_workers": 2,
        "threads": 0,  # torch CPU threads; 0 = torch default
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "select_metric": "auto",  # auto | balanced_accuracy | auroc | macro_f1
    },
}

PRESET_DIR = "presets"
CHOICES = {
    ("ssl", "method"): ("supervised", "fixmatch", "freematch"),
    ("ssl", "dist_align_target"): ("labeled", "uniform"),
    ("ssl", "pseudo_from"): ("auto", "student", "ema"),
    ("train", "optimizer"): ("auto", "adamw", "sgd"),
    ("train", "amp"): ("auto", "off", "bf16", "fp16"),
    ("train", "select_metric"): ("auto", "balanced_accuracy", "auroc", "macro_f1"),
}
# (section, key): (min, max) inclusive; None = unbounded
RANGES = {
    ("model", "drop_rate"): (0.0, 0.9),
    ("input", "height"): (16, 4096),
    ("input", "width"): (16, 4096),
    ("input", "bit_depth"): (8, 16),
    ("ssl", "threshold"): (0.0, 1.0),
    ("ssl", "lambda_u"): (0.0, None),
    ("ssl", "fairness"): (0.0, None),
    ("ssl", "mu"): (0, 64),
    ("ssl", "ema_momentum"): (0.0, 1.0),
    ("augment", "shift"): (0.0, 0.5),
    ("augment", "strong_ops"): (0, 11),
    ("augment", "strong_magnitude"): (0.0, 1.0),
    ("augment", "cutout_max"): (0.0, 0.9),
    ("train", "steps"): (1, None),
    ("train", "batch_size"): (1, 4096),
    ("train", "lr"): (0.0, 10.0),
    ("train", "weight_decay"): (0.0, 1.0),
    ("train", "momentum"): (0.0, 1.0),
    ("train", "warmup_steps"): (0, None),
    ("train", "grad_clip"): (0.0, None),
    ("train", "ema_decay"): (0.0, 0.99999),
    ("train", "label_smoothing"): (0.0, 0.5),
    ("train", "eval_every"): (1, None),
    ("train", "checkpoint_every"): (1, None),
    ("train", "log_every"): (1, None),
    ("train", "num_workers"): (0, 64),
    ("train", "threads"): (0, 1024),
}
# keys that may be None besides their declared type
NULLABLE = {
    ("input", "bit_depth"),
    ("train", "max_time"),
    ("train", "lr"),
    ("train", "weight_decay"),
}
# nullable keys whose value, when given, is a number
FLOAT_KEYS = {("train", "lr"), ("train", "weight_decay")}
# what train.lr / train.weight_decay mean when left empty, per optimizer (measured in
# benchmarks/ssl_neu.py, docs/TRAINING.md): fine-tuning an ImageNet backbone from a few labels
OPTIMIZER_DEFAULTS = {
    "adamw": {"lr": 3e-4, "weight_decay": 0.01},
    "sgd": {"lr": 0.03, "weight_decay": 5e-4},
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> float | None:
    """'8h', '90m', '45s', '1.5h', 3600 -> seconds; None/'none'/0 -> None (no limit)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"invalid duration {value!r}: use e.g. 8h, 30m or 3600")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigError(f"invalid duration {value!r}: use e.g. 8h, 30m, 45s or 3600")
        seconds = (
            float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2).lower()]
        )
    if seconds < 0:
        raise ConfigError(f"invalid duration {value!r}: must not be negative")
    return seconds or None


def default_config() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(DEFAULTS)


def preset_names() -> list[str]:
    files = resources.files("defectssft").joinpath(PRESET_DIR).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset '{name}' (choose from: {', '.join(names)})")
    text = resources.files("defectssft").joinpath(PRESET_DIR, f"{name}.yaml").read_text()
    return _parse_yaml(text, f"preset {name}")


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    return _parse_yaml(p.read_text(encoding="utf-8"), str(p))


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}:{line} invalid YAML ({getattr(e, 'problem', e)})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: a config must be a mapping of sections (model:, ssl:, train:, ...)"
        )
    return data


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """['train.steps=100', 'ssl.method=fixmatch'] -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.steps=100), got '{item}'")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set key must be section.key (e.g. train.steps), got '{key}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Overlay ``override`` onto ``base`` (both nested); unknown sections/keys raise ConfigError."""
    out = copy.deepcopy(base)
    for section, values in (override or {}).items():
        if section not in DEFAULTS:
            raise ConfigError(
                f"{where}: unknown section '{section}' (known: {', '.join(DEFAULTS)})"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of key: value")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ConfigError(
                    f"{where}: unknown key '{section}.{key}' (known: {', '.join(DEFAULTS[section])})"
                )
            out[section][key] = value
    return out


def _coerce(section: str, key: str, value: Any) -> Any:
    default = DEFAULTS[section][key]
    name = f"{section}.{key}"
    if value is None:
        if (section, key) in NULLABLE:
            return None
        raise ConfigError(f"{name} must not be empty")
    if (section, key) == ("train", "max_time"):
        return parse_duration(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(default, int) or (section, key) == ("input", "bit_depth"):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float) or (section, key) in FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            value = str(value)
        return value
    return value


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check types, choices and ranges; return a normalised copy. Raises ConfigError."""
    cfg = merge(default_config(), cfg)
    for section, values in cfg.items():
        for key, value in values.items():
            value = _coerce(section, key, value)
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(
                    f"{section}.{key} must be one of {', '.join(choices)}, got {value!r}"
                )
            lo_hi = RANGES.get((section, key))
            if lo_hi and value is not None:
                lo, hi = lo_hi
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
                    raise ConfigError(f"{section}.{key} must be {bounds}, got {value!r}")
            values[key] = value
    if cfg["ssl"]["method"] != "supervised" and cfg["ssl"]["mu"] < 1:
        raise ConfigError(f"ssl.mu must be >= 1 for ssl.method={cfg['ssl']['method']}")
    if cfg["train"]["optimizer"] != "auto":
        _fill_optimizer_defaults(cfg)
    _student_without_teacher(cfg)
    return cfg


# The recipe "auto" picks, by the kind of project. Measured, one seed each (docs/TRAINING.md):
# on NEU-DET (defect types, no OK class) AdamW 3e-4 with student pseudo-labels beat SGD 0.03
# with EMA-teacher pseudo-labels (k=5: 93.6 vs 87.4 %); on KolektorSDD (OK/NG, a stream that is
# mostly OK) the same change collapsed the semi-supervised run (AUROC 0.81 vs 0.99).
AUTO_RECIPE = {
    "ok_ng": {"optimizer": "sgd", "pseudo_from": "ema"},
    "defect_types": {"optimizer": "adamw", "pseudo_from": "student"},
}


def _student_without_teacher(cfg: dict[str, Any]) -> None:
    """With no EMA teacher (``train.ema_decay`` 0) the student labels the weak view."""
    if cfg["ssl"]["pseudo_from"] == "ema" and cfg["train"]["ema_decay"] == 0:
        cfg["ssl"]["pseudo_from"] = "student"


def _fill_optimizer_defaults(cfg: dict[str, Any]) -> None:
    for key, value in OPTIMIZER_DEFAULTS[cfg["train"]["optimizer"]].items():
        if cfg["train"][key] is None:
            cfg["train"][key] = value


def resolve_for_data(cfg: dict[str, Any], has_ok_class: bool) -> dict[str, Any]:
    """A copy of ``cfg`` with every ``auto`` made concrete for the data it will train on.

    ``train.optimizer`` and ``ssl.pseudo_from`` left at ``auto`` follow ``AUTO_RECIPE``: a
    project with an OK class (OK/NG inspection) trains with SGD and EMA-teacher pseudo-labels,
    one of defect types only with AdamW and student pseudo-labels; then an empty ``train.lr`` /
    ``train.weight_decay`` takes the optimizer's default.
    """
    cfg = copy.deepcopy(cfg)
    recipe = AUTO_RECIPE["ok_ng" if has_ok_class else "defect_types"]
    if cfg["train"]["optimizer"] == "auto":
        cfg["train"]["optimizer"] = recipe["optimizer"]
    if cfg["ssl"]["pseudo_from"] == "auto":
        cfg["ssl"]["pseudo_from"] = recipe["pseudo_from"]
    _student_without_teacher(cfg)
    _fill_optimizer_defaults(cfg)
    return cfg


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """defaults < preset < config file < overrides dict < --set items; validated."""
    cfg = default_config()
    if preset:
        cfg = merge(cfg, load_preset(preset), f"preset {preset}")
    if config_file:
        cfg = merge(cfg, load_yaml_file(config_file), str(config_file))
    if overrides:
        cfg = merge(cfg, overrides, "overrides")
    if sets:
        cfg = merge(cfg, parse_set(sets), "--set")
    return validate(cfg)


def dump_yaml(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
