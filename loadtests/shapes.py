"""The load shape, shared by the locustfile and the report (no Locust import here:
importing locust monkey-patches the process with gevent)."""

from __future__ import annotations

DEFAULT_SHAPE = "10:10:60,50:20:120,100:20:180"
Stage = tuple[int, float, float]  # users, ramp seconds, hold seconds


def parse_shape(spec: str, scale: float = 1.0) -> list[Stage]:
    """'10:10:60,50:20:120' → [(users, ramp_s, hold_s), ...], durations times scale."""
    stages = []
    for part in spec.split(","):
        users, ramp, hold = (float(x) for x in part.split(":"))
        stages.append((int(users), max(ramp * scale, 1.0), max(hold * scale, 1.0)))
    return stages


def stage_at(stages: list[Stage], t: float) -> str:
    """The stage a moment of the run belongs to; a ramp counts as the stage it leads to."""
    end = 0.0
    for users, ramp, hold in stages:
        end += ramp + hold
        if t < end:
            return f"{users} users"
    return "stopping"


def users_at(stages: list[Stage], t: float) -> float:
    """The user count the shape asks for at time t (linear ramps)."""
    start, prev = 0.0, 0
    for users, ramp, hold in stages:
        if t < start + ramp:
            return prev + (users - prev) * (t - start) / ramp
        if t < start + ramp + hold:
            return float(users)
        start, prev = start + ramp + hold, users
    return 0.0
