"""Slowdown injection: what makes an instance a straggler, reproducibly.

Each instance gets a schedule drawn from a seeded generator keyed by the
instance's index, so two deployments (coded and equal resources) with the
same seed see the same slow instances at the same times. A schedule has:

- slow episodes: alternating normal and slow periods with exponential
  lengths; while slow, service takes ``slow_factor`` times as long. The
  long-run slow fraction is ``slow_fraction``;
- jitter: an extra exponential delay per query with mean ``jitter_ms``;
- failure: from ``fail_at_s`` on, the instance hangs (stops answering) or
  crashes (exits);
- transport: a fixed delay ``net_delay_ms`` per batch and a bandwidth
  ``net_mbps`` for its bytes, on the instances in ``net_instances`` (all
  when empty), as a congested network link would add.

Background CPU load and co-located inference are not per-instance schedules
but processes competing for the cores; ``learncc.bench.interference``
starts them.

Times are seconds after the run's start ``t0`` on ``time.monotonic``, which
all processes of one machine share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from learncc.errors import ConfigError, UnknownNameError, check_number_fields


@dataclass(frozen=True)
class SlowdownConfig:
    slow_factor: float = 1.0
    slow_fraction: float = 0.0
    episode_ms: float = 100.0  # mean length of one slow episode
    jitter_ms: float = 0.0
    fail_instances: tuple[int, ...] = ()
    fail_at_s: float = 0.0
    fail_mode: str = "hang"  # or "crash"
    net_delay_ms: float = 0.0
    net_mbps: float = 0.0  # 0: unlimited
    net_instances: tuple[int, ...] = ()  # empty: every instance
    background_procs: int = 0  # busy-loop processes competing for the cores
    colocated_procs: int = 0  # processes running inference of a model in a loop

    def __post_init__(self) -> None:
        check_number_fields(self)
        if self.slow_factor < 1:
            raise ConfigError(f"slow_factor must be >= 1, got {self.slow_factor}")
        if not 0 <= self.slow_fraction < 1:
            raise ConfigError(
                f"slow_fraction must be in [0, 1), got {self.slow_fraction}"
            )
        if self.episode_ms <= 0 or self.jitter_ms < 0:
            raise ConfigError("episode_ms must be > 0 and jitter_ms >= 0")
        if self.net_delay_ms < 0 or self.net_mbps < 0:
            raise ConfigError("net_delay_ms and net_mbps must be >= 0")
        if self.background_procs < 0 or self.colocated_procs < 0:
            raise ConfigError("background_procs and colocated_procs must be >= 0")
        if self.fail_mode not in ("hang", "crash"):
            raise ConfigError(
                f"fail_mode must be 'hang' or 'crash', got {self.fail_mode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Named conditions; "episodes" is the default benchmark condition of issue 2:
# each instance is 10x slower about 5% of the time.
PRESETS: dict[str, SlowdownConfig] = {
    "none": SlowdownConfig(),
    "episodes": SlowdownConfig(slow_factor=10, slow_fraction=0.05, episode_ms=100),
    "heavy": SlowdownConfig(slow_factor=20, slow_fraction=0.1, episode_ms=200),
    "jitter": SlowdownConfig(jitter_ms=1.0),
    "network": SlowdownConfig(net_delay_ms=2.0, net_mbps=20.0, net_instances=(0, 1)),
    "cpu-load": SlowdownConfig(background_procs=2),
    "colocated": SlowdownConfig(colocated_procs=1),
    "fail-one": SlowdownConfig(fail_instances=(0,), fail_at_s=2.0, fail_mode="hang"),
    "crash-one": SlowdownConfig(fail_instances=(0,), fail_at_s=2.0, fail_mode="crash"),
}


def preset(name: str, **overrides: Any) -> SlowdownConfig:
    if name not in PRESETS:
        raise UnknownNameError("slowdown", name, list(PRESETS))
    unknown = sorted(set(overrides) - {f.name for f in fields(SlowdownConfig)})
    if unknown:
        raise ConfigError(
            f"unknown slowdown settings {unknown}; known: "
            f"{sorted(f.name for f in fields(SlowdownConfig))}"
        )
    return replace(PRESETS[name], **overrides)


def instance_schedule(
    cfg: SlowdownConfig, index: int, duration_s: float, seed: int
) -> dict[str, Any]:
    """The JSON-ready schedule of instance ``index`` for a run of ``duration_s``."""
    episodes: list[tuple[float, float]] = []
    if cfg.slow_fraction > 0 and cfg.slow_factor > 1:
        rng = np.random.default_rng([seed, index])
        mean_slow = cfg.episode_ms / 1000
        mean_normal = mean_slow * (1 - cfg.slow_fraction) / cfg.slow_fraction
        # Start at a random phase so instances are not slow in lockstep.
        t = float(rng.exponential(mean_normal))
        while t < duration_s:
            length = float(rng.exponential(mean_slow))
            episodes.append((t, t + length))
            t += length + float(rng.exponential(mean_normal))
    failing = index in cfg.fail_instances
    networked = not cfg.net_instances or index in cfg.net_instances
    return {
        "net_delay_ms": cfg.net_delay_ms if networked else 0.0,
        "net_mbps": cfg.net_mbps if networked else 0.0,
        "slow_factor": cfg.slow_factor,
        "episodes": episodes,
        "jitter_ms": cfg.jitter_ms,
        "fail_at_s": cfg.fail_at_s if failing else None,
        "fail_mode": cfg.fail_mode,
        "seed": int(seed * 1000 + index),
    }


class Schedule:
    """An instance's view of its schedule: the slowdown factor at time t."""

    def __init__(self, spec: dict[str, Any], t0: float) -> None:
        self.t0 = t0
        self.factor = float(spec.get("slow_factor", 1.0))
        self.episodes = [tuple(e) for e in spec.get("episodes", [])]
        self.jitter_s = float(spec.get("jitter_ms", 0.0)) / 1000
        fail = spec.get("fail_at_s")
        self.fail_at = None if fail is None else t0 + float(fail)
        self.fail_mode = spec.get("fail_mode", "hang")
        self.rng = np.random.default_rng(spec.get("seed", 0))
        self.net_delay_s = float(spec.get("net_delay_ms", 0.0)) / 1000
        mbps = float(spec.get("net_mbps", 0.0))
        self.net_s_per_byte = 8 / (mbps * 1e6) if mbps > 0 else 0.0
        self._next = 0  # episodes are sorted; time only moves forward

    def slow_factor(self, now: float) -> float:
        t = now - self.t0
        while self._next < len(self.episodes) and self.episodes[self._next][1] <= t:
            self._next += 1
        if self._next < len(self.episodes) and self.episodes[self._next][0] <= t:
            return self.factor
        return 1.0

    def jitter(self) -> float:
        return float(self.rng.exponential(self.jitter_s)) if self.jitter_s > 0 else 0.0

    def transport(self, nbytes: int) -> float:
        """Seconds a link adds for moving ``nbytes`` in one batch."""
        return self.net_delay_s + nbytes * self.net_s_per_byte

    def failed(self, now: float) -> bool:
        return self.fail_at is not None and now >= self.fail_at
