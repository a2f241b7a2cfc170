"""Scheduler backends: pure argv builders and output parsers, one class per scheduler type.

``get_backend("sge", {"bin_dir": "/usr/lib/gridengine", "env": {...}})`` returns a ready instance;
see each module's docstring for its options.
"""
from __future__ import annotations

import re

from .base import Backend
from .local import LocalBackend
from .sge import GridEngineBackend
from .slurm import SlurmBackend
from .spark import SparkBackend
from .yarn import YarnBackend

# The schedulers metasched drives: the one list. Each class declares what it is (see Backend); adding a
# scheduler is its module, its line here, its tests, config/test.config and the README's table.
BACKENDS: dict[str, type[Backend]] = {cls.type: cls for cls in (
    GridEngineBackend, SlurmBackend, YarnBackend, LocalBackend, SparkBackend)}
TYPES: tuple[str, ...] = tuple(BACKENDS)
_INFERRED = [(re.compile(cls.inferred_from, re.I), t) for t, cls in BACKENDS.items() if cls.inferred_from]


def infer_type(name: str) -> str | None:
    """The scheduler type a scheduler's name implies ("Grid Engine" -> sge, "Apache Hadoop" -> yarn), if any."""
    return next((t for rx, t in _INFERRED if rx.search(name)), None)


def get_backend(type: str, options: dict | None = None) -> Backend:
    """The backend for a scheduler type (one of TYPES)."""
    try:
        cls = BACKENDS[type]
    except KeyError:
        raise ValueError(f"unknown scheduler type {type!r} (expected one of {', '.join(BACKENDS)})") from None
    return cls(options)


__all__ = ["BACKENDS", "TYPES", "infer_type", "get_backend", "GridEngineBackend", "SlurmBackend", "YarnBackend", "LocalBackend", "SparkBackend"]
