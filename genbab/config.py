"""The one typed configuration tree, built by the CLI or API and passed down.

YAML files map onto it section by section; an unknown key is an error that
names the key.  Nothing here is global: callers build a ``Config`` and hand it
to ``genbab.verify``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass(frozen=True)
class AttackConfig:
    """Counterexample search run before any bounding."""

    enabled: bool = True
    random_samples: int = 2000
    pgd_restarts: int = 8
    pgd_steps: int = 100
    pgd_step_size: float = 0.1  # fraction of the box width per step, decayed
    time_budget: float = 10.0  # seconds at most for the initial attack
    extend_until_timeout: bool = True  # when bounds fail, keep attacking (wider) until timeout


@dataclass(frozen=True)
class BoundConfig:
    """Bound propagation on the root domain."""

    method: str = "alpha-crown"  # ibp | crown | alpha-crown
    intermediate: str = "crown"  # crown | ibp: how pre-activation bounds are computed
    alpha_iterations: int = 50
    alpha_lr: float = 0.1
    alpha_lr_decay: float = 0.98
    optimize_intermediate: bool = True  # alpha-CROWN also tightens intermediate bounds
    intermediate_iterations: int = 10  # alpha steps per pre-activation (layer by layer)
    float64_retry: float = 1e-3  # float32 margins all above -this: redo in float64 (0: never)
    max_intermediate_batch: int = 2048  # neurons bounded per backward pass


@dataclass(frozen=True)
class BabConfig:
    """Branch and bound on nonlinear neurons (GenBaB)."""

    enabled: bool = True
    batch_size: int = 64  # domains split per round (each gives two children)
    max_domains: int = 200000
    iterations: int = 20  # alpha/beta optimisation steps per round
    lr: float = 0.1
    heuristic: str = "babsr"  # babsr | bbps (ablation of 2026-12-04: babsr proves more)
    branching_point: str = "lookup"  # lookup | midpoint
    bbps_candidates: int = 32  # neurons per domain rescored by BBPS after the cheap filter
    min_width: float = 1e-5  # neurons narrower than this are not split
    per_disjunct: bool = True  # neuron mode: one BaB per unproved disjunct, easiest first
    mode: str = "auto"  # auto | neuron | input: what to split (auto: input if few inputs)
    input_split_max_dims: int = 16  # auto picks input splitting up to this many inputs
    input_batch_size: int = 512  # boxes split per round in input mode
    input_bound_method: str = "crown"  # crown | alpha-crown for the boxes of input splitting
    input_intermediate: str = "crown"  # crown | ibp: intermediate bounds of those boxes


@dataclass(frozen=True)
class Config:
    """Everything that steers one verification run."""

    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float64
    timeout: float = 300.0
    seed: int = 0
    check_model: bool = True  # compare our graph with onnxruntime on load
    quick: bool = True  # small models: torch-free IBP + sampling first (genbab.quick)
    attack: AttackConfig = field(default_factory=AttackConfig)
    bounds: BoundConfig = field(default_factory=BoundConfig)
    bab: BabConfig = field(default_factory=BabConfig)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("float32", "float64"),
    "bounds.method": ("ibp", "crown", "alpha-crown"),
    "bounds.intermediate": ("crown", "ibp"),
    "bab.heuristic": ("bbps", "babsr"),
    "bab.branching_point": ("lookup", "midpoint"),
    "bab.mode": ("auto", "neuron", "input"),
    "bab.input_bound_method": ("crown", "alpha-crown"),
    "bab.input_intermediate": ("crown", "ibp"),
}
POSITIVE = ("timeout", "attack.time_budget", "bounds.alpha_lr", "bab.lr")
NON_NEGATIVE = ("bounds.float64_retry",)


def validate(config: Config) -> Config:
    """Check enumerated and positive settings; raises ConfigError naming the key."""
    import math

    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")
    for key in POSITIVE:
        value = _get(config, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{key}: must be a positive number, got {value!r}")
    for key in NON_NEGATIVE:
        value = _get(config, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{key}: must be a number >= 0, got {value!r}")
    return config


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key '{key}' (known: {known})")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, type(default), f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def config_from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from a nested mapping, on top of ``base`` (defaults if None)."""
    merged = dataclasses.asdict(base or Config())
    _deep_update(merged, data, "config")
    return validate(_build(Config, merged, "config"))


def _deep_update(target: dict, data: dict, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value, f"{where}.{key}")
        else:
            target[key] = value


def load_with_overrides(path: str | Path | None, changes: dict[str, Any]) -> Config:
    """The YAML config at ``path`` (the defaults when None) with command-line ``changes``
    applied, validated.  ``None`` values are skipped; a ``"section.field"`` key sets one
    field of a section.  Raises ConfigError."""
    config = load_config(path) if path else Config()
    for key, value in changes.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section:
            value = dataclasses.replace(getattr(config, section), **{name: value})
            name = section
        config = config.replace(**{name: value})
    return validate(config)


def check_device(config: Config) -> None:
    """ConfigError when ``cuda`` is asked for and torch sees no CUDA device.

    ``auto`` picks cuda only where it is available, so it needs no torch here.
    """
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but no CUDA device is available")


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a YAML file onto the defaults (or ``base``)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    try:
        return config_from_dict(data, base)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
