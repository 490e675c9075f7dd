"""Training configuration: defaults, YAML presets/files, ``--set key=value`` overrides, validation.

Each section is declared once, as a dataclass whose fields carry the default, type, choices,
range and whether the key may be empty (``setting``); ``validate`` checks a config against that
declaration, anything unknown or out of range raising ConfigError with one line. A config is
stored as a plain nested dict ``{section: {key: value}}`` (``config.yaml``, inside ``model.pt``)
and read with attribute access through ``Config.from_dict`` (``cfg.train.steps``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from defectssft.errors import ConfigError

# what train.lr / train.weight_decay mean when left empty, per optimizer, for fine-tuning an
# ImageNet backbone from a few labels (docs/TRAINING.md)
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


# ----------------------------------------------------------------------------- the declaration


def setting(
    default: Any,
    *,
    choices: tuple[str, ...] = (),
    ge: float | None = None,
    le: float | None = None,
    kind: type | None = None,
    nullable: bool = False,
    parse: Callable[[Any], Any] | None = None,
) -> Any:
    """One config key: its default and what values it accepts (``kind`` defaults to the type
    of ``default``; ``nullable``: may be empty; ``parse``: converts the given value)."""
    meta = {
        "choices": choices,
        "ge": ge,
        "le": le,
        "kind": kind or type(default),
        "nullable": nullable,
        "parse": parse,
    }
    return field(default=default, metadata=meta)


class Section:
    """A config section: attribute access to its keys (``cfg.train.steps``)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass
class ModelConfig(Section):
    name: str = setting("tf_efficientnet_lite0")  # any timm model name
    weights: str = setting("imagenet")  # imagenet | none | path to .pth/.safetensors
    drop_rate: float = setting(0.2, ge=0.0, le=0.9)


@dataclass
class InputConfig(Section):
    # empty: proposed from the images' median aspect ratio at about side x side pixels
    # (defectssft.inputsize); a value given wins
    height: int | None = setting(None, kind=int, nullable=True, ge=16, le=4096)
    width: int | None = setting(None, kind=int, nullable=True, ge=16, le=4096)
    side: int = setting(128, ge=16, le=4096)
    # None: the project's setting input.bit_depth (default 16)
    bit_depth: int | None = setting(None, kind=int, nullable=True, ge=8, le=16)


@dataclass
class SSLConfig(Section):
    method: str = setting("freematch", choices=("supervised", "fixmatch", "freematch"))
    threshold: float = setting(0.95, ge=0.0, le=1.0)  # fixmatch confidence threshold tau
    lambda_u: float = setting(1.0, ge=0.0)
    mu: int = setting(3, ge=0, le=64)  # unlabeled images per labeled image in a step
    dist_align: bool = setting(True)  # distribution alignment (decisive on imbalanced data)
    dist_align_target: str = setting("labeled", choices=("labeled", "uniform"))
    fairness: float = setting(0.0, ge=0.0)  # weight of FreeMatch's fairness term (0 = off)
    # which network labels the weak view (auto: see resolve_for_data)
    pseudo_from: str = setting("auto", choices=("auto", "student", "ema"))
    ema_momentum: float = setting(0.99, ge=0.0, le=1.0)  # running estimates of freematch / DA


@dataclass
class AugmentConfig(Section):
    hflip: bool = setting(True)
    vflip: bool = setting(True)
    shift: float = setting(0.0625, ge=0.0, le=0.5)
    strong_ops: int = setting(2, ge=0, le=11)
    strong_magnitude: float = setting(0.9, ge=0.0, le=1.0)
    cutout_max: float = setting(0.15, ge=0.0, le=0.9)  # max erased area fraction (0 disables)


@dataclass
class TrainConfig(Section):
    steps: int = setting(1000, ge=1)
    batch_size: int = setting(16, ge=1, le=4096)  # labeled images per step (per process)
    optimizer: str = setting("auto", choices=("auto", "adamw", "sgd"))  # auto: resolve_for_data
    lr: float | None = setting(None, kind=float, nullable=True, ge=0.0, le=10.0)
    weight_decay: float | None = setting(None, kind=float, nullable=True, ge=0.0, le=1.0)
    momentum: float = setting(0.9, ge=0.0, le=1.0)
    warmup_steps: int = setting(50, ge=0)
    grad_clip: float = setting(5.0, ge=0.0)  # 0 disables
    ema_decay: float = setting(0.99, ge=0.0, le=0.99999)  # EMA teacher; 0 disables
    label_smoothing: float = setting(0.0, ge=0.0, le=0.5)
    # auto: bf16/fp16 on CUDA, off on CPU
    amp: str = setting("auto", choices=("auto", "off", "bf16", "fp16"))
    seed: int = setting(0)
    # e.g. "8h", "30m", 3600 (seconds); None = no limit
    max_time: float | None = setting(None, kind=float, nullable=True, parse=parse_duration)
    eval_every: int = setting(50, ge=1)
    checkpoint_every: int = setting(50, ge=1)
    log_every: int = setting(10, ge=1)
    tensorboard: bool = setting(False)  # also log to run_dir/tensorboard (defectssft[tensorboard])
    num_workers: int = setting(2, ge=0, le=64)
    threads: int = setting(0, ge=0, le=1024)  # torch CPU threads; 0 = torch default
    device: str = setting("auto")  # auto | cpu | cuda | cuda:N
    # the weights' memory layout (modeling.fast_layout): auto = channels_last on the CPU
    layout: str = setting("auto", choices=("auto", "channels_last", "contiguous"))
    select_metric: str = setting("auto", choices=("auto", "balanced_accuracy", "auroc", "macro_f1"))
    # which weights ship: auto = the best validated ones only when the val split is large enough
    # to choose (VAL_MIN_PER_CLASS images of every class), else the final (EMA) ones
    checkpoint: str = setting("auto", choices=("auto", "final", "best"))
    # labeled batches drawn class-balanced (each class equally often) instead of uniformly;
    # on by default: benchmarks/default_path.py --quick (BENCHMARKS.md)
    class_balanced: bool = setting(True)
    # logit adjustment of the supervised loss (Menon et al. 2021): + tau * log(labeled prior)
    logit_adjust: float = setting(0.0, ge=0.0, le=4.0)


def parse_cross_fit(value: Any) -> str | int:
    """evidence.cross_fit: 'auto', 'off' or a fold count K >= 2 (YAML's off/false: 'off',
    on/true: 'auto')."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 2 or k > 20:
        raise ConfigError(
            f"evidence.cross_fit must be auto, off or a fold count from 2 to 20, got {value!r}"
        )
    return k


@dataclass
class EvidenceConfig(Section):
    """Cross-fitting (defectssft.training.crossfit): K fold models, each trained without one
    fold of the labeled images, score that fold (models/vNNNN/oof.npz); the shipped model
    trains on every label. auto: only when some class has no validation images."""

    cross_fit: str | int = setting("auto", kind=str, parse=parse_cross_fit)
    folds: int = setting(4, ge=2, le=20)  # K when cross_fit is auto
    fold_steps: float = setting(0.25, ge=0.01, le=1.0)  # a fold run's steps / train.steps
    # also cross-fit the supervised-only baseline and ship it when it beats the semi-supervised
    # method out of fold (the supervised guard)
    guard: bool = setting(True)


@dataclass
class TilesConfig(Section):
    """Tiles at native resolution (``defectssft_line.tiles``; training: ``training.tiles``)."""

    enabled: bool = setting(False)  # off: the whole ROI resized to input.height x input.width
    scale: float = setting(1.0, ge=0.01, le=4.0)  # ROI resized by this before tiling (1: native)
    overlap: float = setting(0.25, ge=0.0, le=0.9)  # share of a tile its neighbour covers too
    pool: str = setting("max", choices=("max", "topk"))  # part score from its tiles' scores
    top_k: int = setting(3, ge=1, le=1000)  # tiles averaged by pool: topk
    mil_top: int = setting(1, ge=1, le=64)  # top tiles of a defective part that carry its label
    mil_every: int = setting(50, ge=1)  # steps between re-choosing those tiles
    batch: int = setting(16, ge=1, le=1024)  # tiles scored at once (validation, MIL)


@dataclass
class Config:
    """A validated training config with attribute access (``Config.from_dict(d).train.steps``);
    ``as_dict`` gives the plain nested dict stored in ``config.yaml`` and ``model.pt``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    tiles: TilesConfig = field(default_factory=TilesConfig)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> Config:
        """Validate ``cfg`` (unset keys take their defaults); ConfigError with one line."""
        checked = validate(cfg)
        return cls(**{f.name: SECTIONS[f.name](**checked[f.name]) for f in fields(cls)})

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: getattr(self, f.name).as_dict() for f in fields(self)}


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "input": InputConfig,
    "ssl": SSLConfig,
    "augment": AugmentConfig,
    "train": TrainConfig,
    "evidence": EvidenceConfig,
    "tiles": TilesConfig,
}
DEFAULTS: dict[str, dict[str, Any]] = Config().as_dict()
PRESET_DIR = "presets"


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


def _coerce(section: str, key: str, value: Any, meta: Any) -> Any:
    name = f"{section}.{key}"
    kind = meta["kind"]
    if value is None:
        if meta["nullable"]:
            return None
        raise ConfigError(f"{name} must not be empty")
    if meta["parse"] is not None:
        return meta["parse"](value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        return str(value)
    return value


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check types, choices and ranges; return a normalised copy. Raises ConfigError."""
    cfg = merge(default_config(), cfg)
    for section, values in cfg.items():
        for f in fields(SECTIONS[section]):
            key, meta = f.name, f.metadata
            value = _coerce(section, key, values[key], meta)
            choices = meta["choices"]
            if choices and value not in choices:
                raise ConfigError(
                    f"{section}.{key} must be one of {', '.join(choices)}, got {value!r}"
                )
            lo, hi = meta["ge"], meta["le"]
            if value is not None and (lo is not None or hi is not None):
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


# The recipe "auto" picks, by the kind of project (why and the measurements: docs/TRAINING.md).
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
    for key in ("height", "width"):  # train_project proposes them from the images first
        if cfg["input"][key] is None:
            cfg["input"][key] = cfg["input"]["side"]
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
