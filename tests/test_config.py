"""The training config declared once: attribute access, the declaration drives validation."""

from __future__ import annotations

import dataclasses

import pytest

from defectssft.errors import ConfigError
from defectssft.training.config import DEFAULTS, SECTIONS, Config, resolve_config


def test_attribute_access_and_round_trip():
    cfg = Config.from_dict(resolve_config(sets=["train.steps=7", "train.max_time=1h"]))
    assert (cfg.train.steps, cfg.train.max_time, cfg.ssl.method) == (7, 3600.0, "freematch")
    assert cfg.input.bit_depth is None  # the project's setting decides
    assert Config.from_dict(cfg.as_dict()) == cfg
    assert Config().as_dict() == DEFAULTS


def test_every_key_is_checked_from_its_declaration():
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta["choices"]:
                with pytest.raises(ConfigError, match=f"{section}.{f.name} must be one of"):
                    Config.from_dict({section: {f.name: "nonsense"}})
            if meta["le"] is not None:
                with pytest.raises(ConfigError, match=f"{section}.{f.name} must be between"):
                    Config.from_dict({section: {f.name: meta["le"] + 1}})
            if not meta["nullable"]:
                with pytest.raises(ConfigError, match=f"{section}.{f.name} must not be empty"):
                    Config.from_dict({section: {f.name: None}})
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        Config.from_dict({"train": {"stepz": 3}})
