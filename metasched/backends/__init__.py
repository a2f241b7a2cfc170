"""Scheduler backends: pure argv builders and output parsers, one class per scheduler type.

``get_backend("sge", {"bin_dir": "/usr/lib/gridengine", "env": {...}})`` returns a ready instance;
see each module's docstring for its options.
"""
from __future__ import annotations

from .base import Backend
from .local import LocalBackend
from .sge import GridEngineBackend
from .slurm import SlurmBackend
from .spark import SparkBackend
from .yarn import YarnBackend

BACKENDS: dict[str, type[Backend]] = {
    "sge": GridEngineBackend,
    "slurm": SlurmBackend,
    "yarn": YarnBackend,
    "local": LocalBackend,
    "spark": SparkBackend,
}


def get_backend(type: str, options: dict | None = None) -> Backend:
    """The backend for a scheduler type (sge | slurm | yarn | local | spark, or a SchedulerType member)."""
    key = getattr(type, "value", type)
    try:
        cls = BACKENDS[key]
    except KeyError:
        raise ValueError(f"unknown scheduler type {type!r} (expected one of {', '.join(BACKENDS)})") from None
    return cls(options)


__all__ = ["BACKENDS", "get_backend", "GridEngineBackend", "SlurmBackend", "YarnBackend", "LocalBackend", "SparkBackend"]
