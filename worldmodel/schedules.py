"""Schedules for learning rate, weight decay and EMA momentum: pure functions of the step.

Steps count optimizer steps from 0; a run of `total_steps` steps ends at step `total_steps - 1`, and
every schedule reaches its final value exactly there (V-JEPA 2's cooldown, with `ipe_scale` 1.25,
stopped at 80% of its ramp; here the ramp ends on the last step). Past the end the final value holds.
No state: resuming at step s gives the value at s, with nothing to fast-forward.

`Schedule` wraps one of them for YAML configs:

    lr: {kind: warmup_constant_cooldown, warmup_steps: 500, cooldown_steps: 1000, base: 5.25e-4, start: 1e-4, final: 1e-6}
    weight_decay: 0.04                       # a number is a constant
    ema_momentum: {kind: linear, start: 0.998, end: 1.0}

`total_steps` is usually left out of the config and bound once the trainer knows it:
`Schedule.from_config(cfg).bind(total_steps=trainer.estimated_stepping_batches)`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

COOLDOWN_SHAPES = ("linear", "cosine")


def _ramp(progress: float, start: float, end: float, shape: str = "linear") -> float:
    """From start (progress 0) to end (progress 1); progress is clamped into [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        keep = 1.0 - progress
    elif shape == "cosine":
        keep = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"schedules.py: shape must be one of {COOLDOWN_SHAPES}, got {shape!r}")
    return start * keep + end * (1.0 - keep)  # exactly start at 0 and exactly end at 1


def _check_steps(total_steps: int, **phases: int) -> None:
    if total_steps < 1:
        raise ValueError(f"schedules.py: total_steps must be >= 1, got {total_steps}")
    for name, steps in phases.items():
        if steps < 0:
            raise ValueError(f"schedules.py: {name} must be >= 0, got {steps}")
    if sum(phases.values()) > total_steps - 1:
        detail = " + ".join(f"{k}={v}" for k, v in phases.items())
        raise ValueError(
            f"schedules.py: {detail} does not fit in total_steps={total_steps} (steps 0..{total_steps - 1}); "
            "shorten the phases or train longer."
        )


def constant(step: int, value: float) -> float:
    """`value` at every step."""
    return float(value)


def linear(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear from `start` at step 0 to `end` at the last step (total_steps - 1), then `end`.

    For weight-decay and EMA-momentum ramps (V-JEPA 1: EMA 0.998 -> 1.0, WD 0.04 -> 0.4).
    """
    _check_steps(total_steps)
    if total_steps == 1:
        return float(end)
    return _ramp(step / (total_steps - 1), start, end)


def warmup_constant_cooldown(
    step: int,
    total_steps: int,
    warmup_steps: int,
    cooldown_steps: int,
    base: float,
    start: float = 0.0,
    final: float = 0.0,
    cooldown: str = "linear",
) -> float:
    """Linear warmup `start` -> `base` over steps [0, warmup_steps], `base` until the cooldown, then a
    linear (or cosine) cooldown over the last `cooldown_steps` steps to `final`, reached exactly at the
    last step (total_steps - 1). V-JEPA 2's recipe: warmup, constant LR, then a cooldown run.

    With cooldown_steps=0 the value stays `base` to the end (`final` is unused).
    """
    _check_steps(total_steps, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps)
    if cooldown not in COOLDOWN_SHAPES:
        raise ValueError(f"schedules.py: cooldown must be one of {COOLDOWN_SHAPES}, got {cooldown!r}")
    if step < warmup_steps:
        return _ramp(step / warmup_steps, start, base)
    cooldown_start = total_steps - 1 - cooldown_steps
    if cooldown_steps == 0 or step <= cooldown_start:
        return float(base)
    return _ramp((step - cooldown_start) / cooldown_steps, base, final, cooldown)


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base: float,
    start: float = 0.0,
    final: float = 0.0,
) -> float:
    """Linear warmup `start` -> `base` over steps [0, warmup_steps], then a cosine from `base` to `final`,
    reached exactly at the last step (V-JEPA 1's LR; V-JEPA 2 sets final = base, i.e. constant)."""
    _check_steps(total_steps, warmup_steps=warmup_steps)
    if step < warmup_steps:
        return _ramp(step / warmup_steps, start, base)
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps == 0:
        return float(final)
    return _ramp((step - warmup_steps) / decay_steps, base, final, "cosine")


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "linear": linear,
    "warmup_constant_cooldown": warmup_constant_cooldown,
    "warmup_cosine": warmup_cosine,
}


def _parameters(kind: str) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(SCHEDULES[kind]).parameters)
    params.pop("step")
    return params


@dataclass(frozen=True)
class Schedule:
    """A named schedule and its arguments (all but `step`); `schedule(step) -> float`.

    kind: one of SCHEDULES ("constant", "linear", "warmup_constant_cooldown", "warmup_cosine").
    params: keyword arguments of that function; missing ones (usually total_steps) can be given later
    with `bind`.
    """

    kind: str = "constant"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedules.py: unknown schedule kind {self.kind!r}; use one of {sorted(SCHEDULES)}")
        allowed = _parameters(self.kind)
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(
                f"schedules.py: schedule {self.kind!r} got unknown parameters {unknown}; it takes {sorted(allowed)}"
            )
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def constant(cls, value: float) -> Schedule:
        """`value` at every step."""
        return cls("constant", {"value": float(value)})

    @classmethod
    def from_config(cls, config: float | int | Mapping[str, Any] | Schedule, **defaults: Any) -> Schedule:
        """From a number (constant), a dict {kind: ..., <params>} or {kind: ..., params: {...}}, or a Schedule;
        then `bind(**defaults)` (e.g. total_steps=...: used where the schedule takes it and the config
        does not set it)."""
        if isinstance(config, Schedule):
            return config.bind(**defaults)
        if isinstance(config, (int, float)) and not isinstance(config, bool):
            return cls.constant(config)
        if isinstance(config, Mapping):
            options = dict(config)
            if "kind" not in options:
                raise ValueError(f"schedules.py: a schedule config needs a 'kind' key, got {config!r}")
            kind = options.pop("kind")
            params = options.pop("params", {})
            return cls(kind, {**params, **options}).bind(**defaults)
        raise ValueError(f"schedules.py: cannot build a schedule from {config!r}; give a number or a dict with 'kind'")

    def bind(self, **defaults: Any) -> Schedule:
        """A copy with `defaults` filled in where this schedule takes them and does not set them yet."""
        allowed = _parameters(self.kind)
        extra = {k: v for k, v in defaults.items() if k in allowed and k not in self.params}
        return Schedule(self.kind, {**self.params, **extra})

    def __call__(self, step: int) -> float:
        missing = [
            name for name, p in _parameters(self.kind).items()
            if p.default is inspect.Parameter.empty and name not in self.params
        ]
        if missing:
            raise ValueError(
                f"schedules.py: schedule {self.kind!r} is missing {missing}; set them in the config or call "
                f".bind({', '.join(f'{m}=...' for m in missing)})"
            )
        return SCHEDULES[self.kind](step, **self.params)
