"""The lease's fencing token, checked where a submit lands: on the scheduler's master node.

Fencing the database writes (lease.py) stops a stale poller from *recording* anything, but not from
*submitting*: a holder paused between its last check and its round trip (SIGSTOP, a VM pause, a long
database lock) could wake up after another holder took over and submit a job the new holder has just
submitted again. So every submit round trip runs inside :data:`SUBMIT`, a constant shell wrapper on the
master node that

1. takes a *shared* flock on this installation's fence file (``~/.metasched/fence-<installation id>``, the
   SSH user's, mode 0600 in a 0700 directory), held until the submit command has returned, and
2. refuses (``@@metasched-fenced`` on stderr, nothing run) when the epoch in the file is newer than its own.

A poller that finds jobs DISPATCHING at the start of a cycle (an attempt interrupted by a crash, a timeout,
a takeover) first *raises* the fence on their master nodes (:data:`RAISE`): it takes the *exclusive* lock,
which waits until every attempt still running there has returned, and writes its own epoch, which refuses
every later attempt of an older epoch. Only once the fence is raised is the job looked up by its tag: the
attempt can no longer land, so "not found" means it never will be, and the job may be dispatched again
without ever running twice. No clock is involved: the kernel's lock is the bound. If the fence cannot be
raised this cycle (the node is down, or an attempt there still runs), the job waits, honestly DISPATCHING.

Both run as the SSH user, outside ``sudo -u <owner>``; the lock's descriptor is closed for the submit
command itself, so nothing the job starts can keep it.
"""
from __future__ import annotations

import re

FENCED_MARK = "@@metasched-fenced"

_PREAMBLE = ('i=$1; e=$2; umask 077; d="$HOME/.metasched"; f="$d/fence-$i"; '
             '[ -d "$d" ] || mkdir -p "$d" || { echo "metasched: cannot create $d" >&2; exit 75; }; '
             'exec 9<>"$f" || { echo "metasched: cannot open $f" >&2; exit 75; }; ')

# $1 installation id, $2 our epoch, $3 seconds to wait for a raise in progress, $4... the submit command.
SUBMIT = (_PREAMBLE + 'w=$3; shift 3; '
          'flock -s -w "$w" 9 || { echo "' + FENCED_MARK + ' the fence $f is held" >&2; exit 75; }; '
          'read c <&9 || c=${c:-0}; '
          '[ "${c:-0}" -le "$e" ] || { echo "' + FENCED_MARK + ' epoch $e, the node has seen $c" >&2; exit 75; }; '
          '"$@" 9<&-; r=$?; exit $r')

# $1 installation id, $2 our epoch, $3 seconds to wait for the attempts still running there.
# Prints "raised", "busy" (an attempt still runs) or "newer <epoch>" (the node has seen a later epoch).
RAISE = (_PREAMBLE + 'w=$3; '
         'flock -x -w "$w" 9 || { echo busy; exit 0; }; '
         'read c <&9 || c=${c:-0}; '
         'if [ "${c:-0}" -gt "$e" ]; then echo "newer $c"; else printf "%s\\n" "$e" > "$f" && echo raised; fi')

_INSTALLATION = re.compile(r"^[0-9a-f]{4,32}$")


def _check(installation: str, epoch: int) -> None:
    if not _INSTALLATION.match(installation or ""):
        raise ValueError(f"installation id {installation!r} is not a short hex string")
    if not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch {epoch!r} is not a positive integer")


def submit_argv(installation: str, epoch: int, argv: list[str], wait: float = 10) -> list[str]:
    """Run ``argv`` (a submit round trip) only while the node's fence allows ``epoch``."""
    _check(installation, epoch)
    return ["sh", "-c", SUBMIT, "sh", installation, str(epoch), str(int(wait)), *argv]


def raise_argv(installation: str, epoch: int, wait: float = 2) -> list[str]:
    _check(installation, epoch)
    return ["sh", "-c", RAISE, "sh", installation, str(epoch), str(int(wait))]


def parse_raise(rc: int | None, stdout: str, stderr: str) -> tuple[str, int | None]:
    """("raised" | "busy" | "newer" | "failed", the node's newer epoch)."""
    line = next((ln.strip() for ln in (stdout or "").splitlines() if ln.strip()), "")
    if rc == 0 and line == "raised":
        return "raised", None
    if rc == 0 and line == "busy":
        return "busy", None
    m = re.match(r"^newer (\d+)$", line)
    if rc == 0 and m:
        return "newer", int(m.group(1))
    return "failed", None


def fenced_out(stderr: str) -> str | None:
    """The fence's refusal, when a submit round trip was refused by it (nothing ran)."""
    for line in (stderr or "").splitlines():
        if line.startswith(FENCED_MARK):
            return line[len(FENCED_MARK):].strip() or "fenced out"
    return None
