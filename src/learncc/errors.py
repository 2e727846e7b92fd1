"""Exception hierarchy.

Every error a user can cause derives from ``LearnccError``; the CLI prints its
message without a traceback. Each class is named for its cause and carries the
figures that explain it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class LearnccError(Exception):
    """Root of learncc's errors; the message is meant for the user."""


class ConfigError(LearnccError, ValueError):
    """A configuration value cannot work (bad k, unknown name, mismatched shapes)."""


class UnknownNameError(ConfigError):
    """A registry lookup (dataset, model, code) named something not registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(
            f"unknown {kind} {name!r}; choose one of: {', '.join(self.known)}"
        )


class DataUnavailableError(LearnccError):
    """A dataset's files are missing and could not be downloaded."""


class BundleError(LearnccError):
    """A coded model bundle is missing, incomplete, corrupt or unsafe."""


class BadQueryError(LearnccError, ValueError):
    """A query's input has the wrong shape, dtype or values."""


class QueryTimeoutError(LearnccError, TimeoutError):
    """No real or reconstructed answer arrived before the query's deadline."""

    def __init__(self, query_id: int, timeout_s: float) -> None:
        self.query_id, self.timeout_s = query_id, timeout_s
        super().__init__(
            f"query {query_id} got no answer within {timeout_s:g} s "
            "(no instance returned it and its coding group could not decode it)"
        )


class OverloadedError(LearnccError, RuntimeError):
    """The frontend refused a query because its bound on pending queries is reached."""

    def __init__(self, pending: int, limit: int) -> None:
        self.pending, self.limit = pending, limit
        super().__init__(
            f"overloaded: {pending} queries pending, limit {limit}; retry shortly "
            "or raise max_pending if the instances can take more"
        )


class FrontendClosedError(LearnccError, RuntimeError):
    """The frontend was closed (by us) before or while the query was served."""


class BackendUnavailableError(LearnccError, RuntimeError):
    """No live instance can take the query (they died or never started)."""


class NonFiniteOutputError(BackendUnavailableError, ArithmeticError):
    """F gave NaN or infinity for this input, so the instance refused to answer.

    A subclass of ``BackendUnavailableError`` because it arrives the same way
    (an instance failed the query), but retrying cannot help: the input is the
    cause (typically finite values large enough to overflow F).
    """


def check_number_fields(config: Any) -> None:
    """Refuse a dataclass's ``int``, ``float``, ``bool`` and ``str`` fields
    holding anything else. Settings arrive from TOML sweep configs, where
    "8ms" would fail later as a TypeError and ``true`` would pass as 1
    (fresh-user tests).

    Raises:
        ConfigError: naming the field and what it holds.
    """
    kinds = {
        "float": ((int, float), "a number"),
        "int": ((int,), "an integer"),
        "bool": ((bool,), "true or false"),
        "str": ((str,), "a string"),
        "str | None": ((str, type(None)), "a string"),
    }
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, what = kinds.get(str(f.type), (None, ""))
        if kind is not None and (
            (isinstance(value, bool) and bool not in kind)
            or not isinstance(value, kind)
        ):
            raise ConfigError(f"{f.name} must be {what}, got {value!r}")


def check_seed(seed: object) -> None:
    """Refuse a seed NumPy's generators cannot take (negative) or results.json
    cannot hold (beyond 64 bits), before any work.

    Raises:
        ConfigError: naming the seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
