"""Output for people: aligned tables, short local times, state colours (only on a terminal, never with
NO_COLOR set). Scripts use ``--json`` instead, which bypasses all of this."""
from __future__ import annotations

import datetime as _dt
import os
import shlex
import sys

STATE_COLOURS = {
    "TO_BE_QUEUED": "34",    # blue
    "HELD": "33",            # yellow
    "DISPATCHING": "36",     # cyan
    "QUEUED": "36",
    "RUNNING": "32;1",       # bold green
    "COMPLETED": "32",       # green
    "ERROR": "31;1",         # bold red
    "CANCELLED": "35",       # magenta
}


def use_colour(stream=None) -> bool:
    stream = stream or sys.stdout
    return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


class Cell(str):
    """A table cell with an ANSI colour applied after padding (so alignment counts visible chars)."""

    colour: str | None = None


def state(value: str | None, colour: bool) -> str:
    text = value or "-"
    if not colour or value not in STATE_COLOURS:
        return text
    c = Cell(text)
    c.colour = STATE_COLOURS[value]
    return c


def table(headers: list[str], rows: list[list], colour: bool = False) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[("-" if v is None or v == "" else v) if isinstance(v, str) or v is None else str(v) for v in r]
             for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    out = []

    def line(values):
        parts = []
        for i, v in enumerate(values):
            pad = "" if i == len(values) - 1 else " " * (widths[i] - len(v))
            text = v
            if colour and isinstance(v, Cell) and v.colour:
                text = f"\033[{v.colour}m{v}\033[0m"
            parts.append(text + pad)
        return "  ".join(parts).rstrip()

    out.append(line(headers))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def fields(pairs: list[tuple[str, object]]) -> str:
    """``key: value`` lines with the values aligned."""
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}} {'-' if v is None or v == '' else v}" for k, v in pairs)


# -- time -------------------------------------------------------------------------------------

def parse_time(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s < 36000 else f"{s // 3600}h"
    return f"{round(s / 86400)}d"


def short_time(value: str | None, now: _dt.datetime | None = None) -> str:
    """For tables: '12s ago' / '3h05m ago' within a day (or 'in 29d' ahead), else a short local date."""
    t = parse_time(value)
    if t is None:
        return "-"
    now = now or _dt.datetime.now(_dt.timezone.utc)
    delta = (now - t).total_seconds()
    if delta >= 0 and delta < 86400:
        return f"{_span(delta)} ago"
    if delta < 0:
        return f"in {_span(delta)}"
    local = t.astimezone()
    if delta < 180 * 86400:
        return local.strftime("%b %d %H:%M")
    return local.strftime("%Y-%m-%d")


def long_time(value: str | None, now: _dt.datetime | None = None) -> str:
    """For ``show``: full local time plus the relative form."""
    t = parse_time(value)
    if t is None:
        return "-"
    now = now or _dt.datetime.now(_dt.timezone.utc)
    delta = (now - t).total_seconds()
    rel = f"{_span(delta)} ago" if delta >= 0 else f"in {_span(delta)}"
    return f"{t.astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')} ({rel})"


def duration(start: str | None, end: str | None, now: _dt.datetime | None = None) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None:
        return "-"
    b = b or now or _dt.datetime.now(_dt.timezone.utc)
    return _span((b - a).total_seconds())


def argv(options: list[str]) -> str:
    """Arguments as a shell would need them typed."""
    return " ".join(shlex.quote(o) for o in options) if options else ""


# -- what jobs used (issue 15) -------------------------------------------------------------------------

def size(n: int | None) -> str | None:
    """Bytes for people, binary units as sacct and top use them: 512K, 210.3M, 1.5G."""
    if n is None:
        return None
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor:
            v = n / factor
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n}B"


def seconds(v: float | None) -> str | None:
    """A duration: 2.01s, 1:02 (minutes:seconds), 3:04:05, 2-03:04:05 (days, as Slurm prints them)."""
    if v is None:
        return None
    if v < 60:
        return f"{v:.2f}s"
    s = int(round(v))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}-{h:02d}:{m:02d}:{s:02d}"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def percent(v: float | None) -> str | None:
    return None if v is None else f"{v:.1f}%"


def relative(value: str, now: _dt.datetime | None = None) -> str:
    """A time expression of the CLI as the API's UTC ISO 8601: 30s, 45m, 12h, 2d, 1w ago, or a date or time
    (local time unless it names its zone). Raises ValueError."""
    import re
    now = now or _dt.datetime.now(_dt.timezone.utc)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value or "")
    if m:
        n = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        t = now - _dt.timedelta(seconds=n)
    else:
        t = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.astimezone()          # the user's local time
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
