"""Schedules: values at the phase boundaries, exact final values, monotone pieces, config round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worldmodel.schedules import Schedule, linear, warmup_constant_cooldown, warmup_cosine

TOTAL, WARMUP, COOLDOWN = 100, 10, 20
BASE, START, FINAL = 5.25e-4, 1e-4, 1e-6


def values(fn, total=TOTAL, **kw):
    return np.array([fn(s, total, **kw) for s in range(total)])


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_warmup_constant_cooldown(shape):
    kw = dict(warmup_steps=WARMUP, cooldown_steps=COOLDOWN, base=BASE, start=START, final=FINAL, cooldown=shape)
    v = values(warmup_constant_cooldown, **kw)
    assert v[0] == START
    assert v[WARMUP // 2] == pytest.approx((START + BASE) / 2)  # linear warmup
    assert v[WARMUP] == BASE
    cooldown_start = TOTAL - 1 - COOLDOWN
    assert np.all(v[WARMUP : cooldown_start + 1] == BASE)  # constant phase
    assert v[-1] == FINAL  # exactly, at the last step
    assert warmup_constant_cooldown(TOTAL + 50, TOTAL, **kw) == FINAL  # and after it
    assert v[cooldown_start + COOLDOWN // 2] == pytest.approx((BASE + FINAL) / 2)  # both shapes: midpoint
    assert np.all(np.diff(v[: WARMUP + 1]) > 0)
    assert np.all(np.diff(v[cooldown_start:]) < 0)
    if shape == "cosine":  # slower than linear at the start of the cooldown
        lin = values(warmup_constant_cooldown, **{**kw, "cooldown": "linear"})
        assert v[cooldown_start + 2] > lin[cooldown_start + 2]


def test_warmup_constant_cooldown_edges_and_errors():
    # no warmup, no cooldown: constant base, final unused
    assert set(values(warmup_constant_cooldown, warmup_steps=0, cooldown_steps=0, base=2.0, final=0.0)) == {2.0}
    # phases filling the whole run: warmup ends where the cooldown starts
    v = values(warmup_constant_cooldown, total=11, warmup_steps=5, cooldown_steps=5, base=1.0)
    assert v[5] == 1.0 and v[-1] == 0.0 and v[0] == 0.0
    with pytest.raises(ValueError, match="does not fit"):
        warmup_constant_cooldown(0, 100, 60, 40, 1.0)
    with pytest.raises(ValueError, match="cooldown"):
        warmup_constant_cooldown(0, 100, 10, 10, 1.0, cooldown="step")


def test_warmup_cosine():
    v = values(warmup_cosine, warmup_steps=WARMUP, base=BASE, start=START, final=FINAL)
    assert v[0] == START and v[WARMUP] == BASE and v[-1] == FINAL
    mid = WARMUP + (TOTAL - 1 - WARMUP) / 2
    assert warmup_cosine(mid, TOTAL, WARMUP, BASE, START, FINAL) == pytest.approx((BASE + FINAL) / 2)
    assert np.all(np.diff(v[: WARMUP + 1]) > 0) and np.all(np.diff(v[WARMUP:]) < 0)
    # V-JEPA 2: final = base gives warmup then constant
    flat = values(warmup_cosine, warmup_steps=WARMUP, base=BASE, start=START, final=BASE)
    assert np.allclose(flat[WARMUP:], BASE, rtol=0, atol=1e-15)


def test_linear_for_ema_and_weight_decay():
    v = values(linear, start=0.998, end=1.0)
    assert v[0] == 0.998 and v[-1] == 1.0 and linear(10**6, TOTAL, 0.998, 1.0) == 1.0
    assert np.all(np.diff(v) > 0)
    assert linear(0, 1, 0.04, 0.4) == 0.4  # a one-step run is at its last step
    assert math.isclose(linear(50, 101, 0.04, 0.4), 0.22)


def test_schedule_from_config():
    lr = Schedule.from_config(
        {"kind": "warmup_constant_cooldown", "warmup_steps": WARMUP, "cooldown_steps": COOLDOWN, "base": BASE,
         "start": START, "final": FINAL}
    )
    with pytest.raises(ValueError, match=r"missing \['total_steps'\].*bind"):
        lr(0)
    lr = lr.bind(total_steps=TOTAL)
    assert [lr(s) for s in range(TOTAL)] == list(
        values(warmup_constant_cooldown, warmup_steps=WARMUP, cooldown_steps=COOLDOWN, base=BASE, start=START, final=FINAL)
    )
    assert lr.bind(total_steps=5).params["total_steps"] == TOTAL  # bind fills only what is missing
    wd = Schedule.from_config(0.04)
    assert wd(0) == wd(10**6) == 0.04 and wd.bind(total_steps=TOTAL)(3) == 0.04
    ema = Schedule.from_config({"kind": "linear", "params": {"start": 0.998, "end": 1.0}}).bind(total_steps=TOTAL)
    assert ema(0) == 0.998 and ema(TOTAL - 1) == 1.0
    assert Schedule.from_config(ema) == ema
    assert Schedule.from_config({"kind": "linear", "start": 0.0, "end": 1.0}, total_steps=11)(5) == 0.5
    assert Schedule.from_config(0.5, total_steps=11) == Schedule.constant(0.5)
    assert Schedule("warmup_cosine", {"total_steps": 10, "warmup_steps": 2, "base": 1.0})(9) == 0.0
    with pytest.raises(ValueError, match="unknown schedule kind"):
        Schedule.from_config({"kind": "exponential"})
    with pytest.raises(ValueError, match="unknown parameters"):
        Schedule.from_config({"kind": "linear", "begin": 1.0})
    with pytest.raises(ValueError, match="kind"):
        Schedule.from_config({"start": 1.0})
