"""Output for people: aligned tables, short local times, state colours (only on a terminal, never with
NO_COLOR set). Scripts use ``--json`` instead, which bypasses all of this (JSON escapes control characters).

Everything printed that a user (or a scheduler) wrote goes through :func:`escape`: a job's name, path or
arguments must not be able to move an admin's cursor, clear their screen or retitle their terminal.
``table`` and ``fields`` escape every cell; messages escape what they quote."""
from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import shutil
import sys

# C0 controls, DEL, C1 controls (U+009B is a one-character CSI on many terminals), the bidirectional
# controls that reorder what is shown, line and paragraph separators, and lone surrogates (which no
# terminal encoding can even carry).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(m: re.Match) -> str:
    o = ord(m.group())
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def escape(text) -> str:
    """``text`` with every unsafe character written as a visible escape (``\\x1b``, ``\\u009b``, ``\\u202e``)."""
    text = str(text)
    return _UNSAFE.sub(_escaped, text) if _UNSAFE.search(text) else text

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


def _safe(v) -> str:
    """A cell or field value, escaped; a Cell keeps its colour."""
    if v is None or v == "":
        return "-"
    if isinstance(v, Cell):
        c = Cell(escape(v))
        c.colour = v.colour
        return c
    return escape(v)


def state(value: str | None, colour: bool) -> str:
    text = value or "-"
    if not colour or value not in STATE_COLOURS:
        return text
    c = Cell(text)
    c.colour = STATE_COLOURS[value]
    return c


_UNSAFE_BUT_LINES = re.compile(_UNSAFE.pattern.replace("\x00-\x1f", "\x00-\x08\x0b-\x1f"))


def safe_text(text: str) -> str:
    """Like escape, keeping newlines and tabs: for a job's output shown on a terminal."""
    return _UNSAFE_BUT_LINES.sub(_escaped, text) if _UNSAFE_BUT_LINES.search(text) else text


def width() -> int:
    """The terminal's width (COLUMNS, else the terminal, else 80)."""
    return shutil.get_terminal_size((80, 24)).columns


ELLIPSIS = "~"


def _shorten(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    out = (Cell if isinstance(text, Cell) else str)(text[: max(0, n - 1)] + ELLIPSIS)
    if isinstance(text, Cell):
        out.colour = text.colour
    return out


def table(headers: list[str], rows: list[list], colour: bool = False, fit: int | None = None,
          shrink: tuple[tuple[int, int], ...] = ()) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded. fit: the most characters
    a line may take; the ``shrink`` columns ((index, width it is cut to first), in order) are cut, ending in ~,
    to get there: first down to those widths, then, if that is not enough, down to 4 characters."""
    cells = [[_safe(v) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    if fit is not None and shrink:
        over = sum(widths) + 2 * (len(widths) - 1) - fit
        for floor in (None, 4):
            for i, soft in shrink:
                if over <= 0:
                    break
                cut = min(over, widths[i] - max(floor or soft, 4, len(headers[i])))
                if cut > 0:
                    widths[i] -= cut
                    over -= cut
        cut_cols = {i for i, _ in shrink}
        cells = [[_shorten(v, widths[i]) if i in cut_cols else v for i, v in enumerate(r)] for r in cells]
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


def fields(pairs: list[tuple[str, object]], colour: bool = False) -> str:
    """``key: value`` lines with the values aligned (a Cell value in its colour when ``colour``)."""
    width = max(len(k) for k, _ in pairs) + 1

    def value(v) -> str:
        text = _safe(v)
        if colour and isinstance(text, Cell) and text.colour:
            return f"\033[{text.colour}m{text}\033[0m"
        return text
    return "\n".join(f"{k + ':':<{width}} {value(v)}" for k, v in pairs)


def size(n: int | None) -> str | None:
    """Bytes as the largest binary unit that holds them whole (512M, 1.5G shown as 1536M)."""
    if n is None:
        return None
    for unit, scale in (("T", 2 ** 40), ("G", 2 ** 30), ("M", 2 ** 20), ("K", 2 ** 10)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def clock(seconds: int | None) -> str | None:
    """Seconds as [D-]H:MM:SS."""
    if seconds is None:
        return None
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}-" if d else "") + f"{h}:{m:02d}:{s:02d}"


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

def measured_size(n: int | None) -> str | None:
    """Measured bytes for people, binary units as sacct and top use them: 512K, 210.3M, 1.5G (``size`` is
    for what a job asks for: exact)."""
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
