"""The contract every scheduler backend implements.

A backend never does I/O itself: it builds argv lists (run on the scheduler's master node through a
transport, as one shell command line built with ``shlex.join``) and parses what they printed. That keeps
every backend testable against captured real output, and keeps quoting in one place.

Identity: ``run_as`` is the job owner. When it is not None the command must be prefixed with
``sudo -n -u <owner> --`` (see :func:`as_user`); the service never runs a job as root.

Our id travels with the native job (in its name or comment, see :func:`tag`), so that after a crash
the batched status lets the next poller adopt a job it may have submitted instead of submitting again.
"""
from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass

from ..model import Job

TAG_PREFIX = "ms"          # native job name: ms<id>-<token>_<name>


class NativeState(str, enum.Enum):
    PENDING = "PENDING"    # waiting in the native queue (includes held by the scheduler)
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"  # the scheduler still lists it but it is over: ask final_command for how it ended
    ERROR = "ERROR"        # stuck in an error state (Grid Engine Eqw): the job will not run


@dataclass(frozen=True)
class NativeJob:
    """One line of the batched status output: every job the scheduler lists, ours or not."""
    native_id: str
    our_id: int | None          # parsed from the tag, None for jobs not submitted by us
    owner: str
    name: str
    state: NativeState
    queue: str = ""
    start_time: str | None = None   # ISO 8601 UTC when known
    reason: str | None = None       # e.g. the Eqw error text
    our_token: str | None = None    # the token in the tag (None: the old tag without one)
    # an array (issue 16): its tasks listed one by one, and those pending as runs (see NativeTask, PendingRun)
    tasks: tuple = ()
    pending: tuple = ()

    def is_of(self, job: Job) -> bool:
        """This native job is that job of ours: its tag's id and token, and the job's owner (anyone can name
        a job like ours; only the owner's counts)."""
        return self.our_id == job.id and self.our_token == job.token and self.owner == job.owner


@dataclass(frozen=True)
class FinalState:
    """How a finished job ended. status is one of COMPLETED, ERROR, CANCELLED (JobStatus values)."""
    status: str
    exit_code: int | None
    reason: str
    started_at: str | None = None   # ISO 8601 UTC when accounting knows it (a job too short to be seen running)


class SubmitRefused(Exception):
    """The scheduler refused the submission; the message is the scheduler's own reason."""


@dataclass(frozen=True)
class ProcessMatcher:
    """How enforcement recognises a job's process trees on a node.

    roots_by_comm: processes whose *children* are job trees, by command name (e.g. sge_shepherd,
    slurmstepd); exclude_comm: command names never touched (daemons); pgid_file_glob: for the local
    backend, job trees are process groups recorded in files.
    """
    roots_by_comm: tuple[str, ...] = ()
    exclude_comm: tuple[str, ...] = ()
    pgid_file_glob: str | None = None
    # Added for the YARN and local backends. trees_by_args_regex: a process whose full command line
    # (``ps -o args``) matches this regex (re.search) is itself the root of a job tree (it and its
    # descendants belong to the job). exclude_args_regex: processes whose command line matches are never
    # touched, nor is anything matched only through them (the YARN NodeManager's own JVM).
    # include_process_group: every process sharing a matched root's process group belongs to the job too
    # (a local job's double-forked children leave the tree but stay in the group).
    trees_by_args_regex: str | None = None
    exclude_args_regex: str | None = None
    include_process_group: bool = False


class Backend:
    """Base class; each scheduler type subclasses it. Instances are cheap and stateless."""

    type: str = ""
    OPTIONS: tuple[str, ...] = ("recovery_grace",)   # the option keys this backend reads (the config checks)
    starts_on_submit = False    # True when the job runs as soon as it is submitted (no native queue)

    def __init__(self, options: dict | None = None):
        self.options = dict(options or {})

    def _cmd(self, name: str) -> list[str]:
        """argv prefix running the scheduler client ``name`` (bin_dir and env options)."""
        return scheduler_command(self.options, name)

    @staticmethod
    def validate_name(name: str) -> str | None:
        """Why the scheduler would refuse this job name, or None."""
        return control_character_reason(name)

    def validate_job(self, job: Job) -> str | None:
        return self.validate_name(job.name) or path_reason(job)

    # -- submit -------------------------------------------------------------------------------
    def submit_argv(self, job: Job, run_as: str | None) -> list[str]:
        raise NotImplementedError

    def parse_submit(self, job: Job, rc: int, stdout: str, stderr: str) -> str:
        """Return the native id, or raise SubmitRefused with the scheduler's reason."""
        raise NotImplementedError

    # -- several submissions in one round trip (see batch_argv) --------------------------------
    batch_preamble = ""

    def batch_line(self, job: Job):
        """This job's part of a batch: by default the command line that submits it (already running as its
        owner). Raises ValueError when the job cannot be submitted at all."""
        return command_line(self.submit_argv(job, None))

    def batch_submit_argv(self, lines: list, run_as: str | None) -> list[str]:
        """One round trip submitting the jobs whose batch_line()s these are, as run_as; its output is read by
        parse_batch (one framed answer per job, in order)."""
        return batch_argv(lines, run_as, self.batch_preamble)

    # -- observe ------------------------------------------------------------------------------
    def status_argv(self) -> list[str]:
        """ONE command listing every job of every user in the scheduler."""
        raise NotImplementedError

    def parse_status(self, rc: int, stdout: str, stderr: str) -> list[NativeJob]:
        """Raise RuntimeError when the output cannot be trusted (the scheduler is unreachable)."""
        raise NotImplementedError

    # -- end state ----------------------------------------------------------------------------
    def final_argv(self, job: Job) -> list[str]:
        raise NotImplementedError

    def parse_final(self, job: Job, rc: int, stdout: str, stderr: str) -> FinalState | None:
        """How the job ended, or None while the scheduler's accounting does not know yet."""
        raise NotImplementedError

    # Several final-state questions of one owner go in one round trip (see batch_argv).
    def final_entry(self, job: Job):
        """(the user who asks, or None for the service user; this job's question in a batch): by default
        final_argv, or final_by_tag_argv for a job without a native id, as a command line."""
        argv = self.final_argv(job) if job.scheduler_job_id is not None else self.final_by_tag_argv(job)
        run_as, inner = split_run_as(argv)
        return run_as, command_line(inner)

    def final_batch_argv(self, entries: list, run_as: str | None) -> list[str]:
        """One round trip asking the final_entry() questions, as run_as; its output is read by parse_batch."""
        return batch_argv(entries, run_as)

    def forget_entry(self, job: Job):
        """For a job whose final state is recorded: (who, entry for final_batch_argv) removing what the
        backend left behind to learn how it ended (the local exit file), or None (nothing to remove)."""
        return None

    # -- recovery of an interrupted dispatch (optional) -----------------------------------------
    # A job left DISPATCHING by a crash has no native id. If the scheduler no longer lists it, these ask
    # its accounting by our tag whether it already ran: parse_final_by_tag returns (native id or None,
    # FinalState) when it did, None when the scheduler never got the job (then it is submitted again).
    final_by_tag_argv = None
    parse_final_by_tag = None
    # Seconds an interrupted dispatch stays DISPATCHING, unseen, before it is submitted again: a scheduler
    # whose accounting lags (Grid Engine writes qacct records up to accounting_flush_time later) could
    # otherwise forget, for a moment, a job that already ran. Option "recovery_grace" overrides it.
    default_recovery_grace = 0.0

    def recovery_grace(self) -> float:
        return float(self.options.get("recovery_grace", self.default_recovery_grace))

    # -- cancel -------------------------------------------------------------------------------
    def cancel_argv(self, job: Job, run_as: str | None) -> list[str]:
        raise NotImplementedError

    # -- submit-time field checks (optional) ----------------------------------------------------
    def field_problem(self, path: str, pwd: str, options: list[str]) -> tuple[str, str] | None:
        """(field, reason) when the scheduler cannot take these values (checked at submit and edit,
        so the user gets a 400 naming the field instead of a job that fails later), else None."""
        return None

    # -- enforcement --------------------------------------------------------------------------
    def process_matcher(self) -> ProcessMatcher:
        return ProcessMatcher()

    # -- arrays (issue 16) ------------------------------------------------------------------------
    # An array (job.array_spec) is ONE native submission (submit_argv / batch_line build it); its status line(s)
    # come back folded into one NativeJob with .tasks and .pending; the end of each task is asked with
    # task_final_entries / parse_task_finals; tasks are cancelled, held and released with task_action_argv.
    supports_arrays = False

    def array_problem(self, pwd: str) -> tuple[str, str] | None:
        """(field, reason) when this scheduler cannot run an array with this working directory, else None."""
        return None if self.supports_arrays else ("array", f"{self.type} has no job arrays")

    def task_final_entries(self, job: Job, tasks: list[int]) -> list[tuple[list[int], tuple]]:
        """How the given tasks of an array ended: [(the tasks an entry covers, (who asks, entry for
        final_batch_argv))]."""
        raise NotImplementedError

    def parse_task_finals(self, job: Job, tasks: list[int], rc: int, stdout: str, stderr: str) -> dict[int, FinalState]:
        """task -> how it ended, for the covered tasks accounting knows (the others: not yet)."""
        raise NotImplementedError

    def task_action_argv(self, job: Job, action: str, tasks: list[int], run_as: str | None) -> list[str]:
        """cancel, hold or release these tasks of the array in the scheduler."""
        raise NotImplementedError

    # Why a job waits in the scheduler's queue, for schedulers whose status call does not say (Grid Engine's
    # qstat -j scheduling info): one command for several native ids, parsed into native id -> reason.
    pending_reasons_argv = None
    parse_pending_reasons = None


# -- helpers shared by the backends -----------------------------------------------------------

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
TOKEN_RE = re.compile(r"^[a-z]{6}$")


def tag_stem(job: Job) -> str:
    """ms<id>-<token>: our id and the job's random token (see Job.token); ms<id> for a job created before
    tokens existed (schema version 2), whose native jobs carry the old tag."""
    return f"{TAG_PREFIX}{job.id}-{job.token}" if job.token else f"{TAG_PREFIX}{job.id}"


def tag(job: Job, max_len: int = 64) -> str:
    """Native job name carrying our id and token: ms<id>-<token>_<sanitised name>. Safe for every scheduler."""
    stem = tag_stem(job) + "_"
    return stem + _UNSAFE_NAME.sub("_", job.name)[: max(0, max_len - len(stem))]


_TAG_RE = re.compile(rf"^{TAG_PREFIX}(\d+)(?:-([a-z]{{6}}))?_")


def parse_tag(native_name: str | None) -> tuple[int, str | None] | None:
    """(our id, token or None for the old tag) from a native name, or None when it is not tagged like ours."""
    m = _TAG_RE.match(native_name or "")
    return (int(m.group(1)), m.group(2)) if m else None


def untag(native_name: str | None) -> int | None:
    parsed = parse_tag(native_name)
    return parsed[0] if parsed else None


def tag_fields(native_name: str | None) -> dict:
    """The NativeJob fields our tag gives: our_id and our_token."""
    parsed = parse_tag(native_name)
    return {"our_id": parsed[0], "our_token": parsed[1]} if parsed else {"our_id": None, "our_token": None}


def is_tag_of(native_name: str | None, job: Job) -> bool:
    """Whether a native name is this very job's tag: our id AND its token (a job of another installation, of a
    wiped or restored database, carries another token or none)."""
    return parse_tag(native_name) == (job.id, job.token)


def as_user(argv: list[str], run_as: str | None) -> list[str]:
    return (["sudo", "-n", "-u", run_as, "--"] + argv) if run_as else argv


def command_line(argv: list[str]) -> str:
    """The one place an argv becomes a shell command line: every element quoted."""
    return shlex.join(argv)


# -- helpers added with the scheduler backends (append only) ----------------------------------

import posixpath as _posixpath
from datetime import datetime as _datetime, timezone as _timezone
from zoneinfo import ZoneInfo as _ZoneInfo

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def scheduler_command(options: dict, name: str) -> list[str]:
    """argv prefix that runs scheduler client ``name``, honouring the ``bin_dir`` and ``env`` options.

    ``env`` ({"SGE_ROOT": "/var/lib/gridengine"}) becomes an ``env K=V ...`` prefix: it must come after
    ``sudo`` (which resets the environment), so it is part of the command, not of the transport.
    """
    env = options.get("env") or {}
    prefix: list[str] = []
    if env:
        for key in env:
            if not _ENV_KEY.match(str(key)):
                raise ValueError(f"env: {key!r} is not a valid environment variable name")
        prefix = ["env"] + [f"{k}={v}" for k, v in env.items()]
    bin_dir = options.get("bin_dir")
    if bin_dir:
        if "=" in bin_dir and env:
            raise ValueError("bin_dir: must not contain '=' when env is set (env would read it as a variable)")
        return prefix + [_posixpath.join(bin_dir, name)]
    return prefix + [name]


def first_line(*texts: str) -> str:
    """The first non-blank line of the first text that has one: the scheduler's own reason."""
    for text in texts:
        for line in (text or "").splitlines():
            if line.strip():
                return line.strip()
    return ""


def local_to_utc_iso(value: str | None, fmt: str, tz_name: str = "UTC") -> str | None:
    """Parse a scheduler's naive local time (``fmt``) in zone ``tz_name`` and render it as ISO 8601 UTC.

    Schedulers print the time of the host that runs the client, without a zone: the zone is a
    per-backend option (``tz``). Unparseable values (N/A, Unknown) give None.
    """
    if not value:
        return None
    try:
        naive = _datetime.strptime(" ".join(value.split()), fmt)
    except ValueError:
        return None
    aware = naive.replace(tzinfo=_ZoneInfo(tz_name))
    return aware.astimezone(_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_ms_to_utc_iso(value: str | None) -> str | None:
    try:
        ms = int(value or "")
    except ValueError:
        return None
    if ms <= 0:
        return None
    return _datetime.fromtimestamp(ms / 1000, _timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def control_character_reason(name: str) -> str | None:
    """Why a name is unusable in any line-oriented scheduler output: control characters (newline, tab)."""
    if not name:
        return "the job name must not be empty"
    if _CONTROL.search(name):
        return "the job name must not contain control characters (newline, tab, ...)"
    return None


def path_reason(job: Job) -> str | None:
    """Paths must be absolute: a relative path or one starting with '-' would be read as an option."""
    if not job.path or not job.path.startswith("/"):
        return f"path must be an absolute path, got {job.path!r}"
    if not job.pwd or not job.pwd.startswith("/"):
        return f"pwd must be an absolute path, got {job.pwd!r}"
    if "\x00" in job.path or "\x00" in job.pwd or any("\x00" in o for o in job.options):
        return "path, pwd and options must not contain NUL characters"
    return None


# -- batched submission -------------------------------------------------------------------------
# One round trip submits several jobs of one owner: the command lines (each built by command_line(), so
# every element is quoted) are passed as positional parameters to this constant script, which runs them
# one by one and frames each one's stdout, exit status and stderr with markers. The job's own processes
# never keep fd 3 (the round trip's stdout) open.
# $1 is the backend's preamble (constant shell text, e.g. function definitions its lines call), the rest
# are the command lines. Each runs inside the command substitution's subshell: a `cd` or `exit` in it
# stays there.
BATCH_SCRIPT = (
    'exec 3>&1; eval "$1"; shift; i=0; for c in "$@"; do '
    'e=$( { eval "$c"; } 2>&1 1>&3 3>&- ); r=$?; '
    'printf "\\n@@metasched-rc %d %d\\n%s\\n@@metasched-end %d\\n" "$i" "$r" "$e" "$i"; '
    'i=$((i+1)); done'
)
_BATCH_RE = re.compile(r"\n?@@metasched-rc (\d+) (\d+)\n(.*?)\n@@metasched-end \1\n", re.S)


def batch_argv(command_lines: list[str], run_as: str | None, preamble: str = "") -> list[str]:
    return as_user(["sh", "-c", BATCH_SCRIPT, "sh", preamble, *command_lines], run_as)


class BatchAnswers:
    """The framed answers of a batch, read while its output arrives: feed() returns the answers completed
    by this piece of output, [(index, (rc, stdout, stderr))]; an answer is complete once its end marker is in."""

    def __init__(self, n: int):
        self.n = n
        self.buf = ""

    def feed(self, text: str) -> list[tuple[int, tuple[int, str, str]]]:
        self.buf += text
        got, pos = [], 0
        for m in _BATCH_RE.finditer(self.buf):
            i = int(m.group(1))
            if 0 <= i < self.n:
                got.append((i, (int(m.group(2)), self.buf[pos:m.start()], m.group(3))))
            pos = m.end()
        self.buf = self.buf[pos:]
        return got


def parse_batch(stdout: str, n: int) -> list[tuple[int, str, str] | None]:
    """[(rc, stdout, stderr) or None when that command never reported], one per command line."""
    out: list[tuple[int, str, str] | None] = [None] * n
    for i, answer in BatchAnswers(n).feed(stdout):
        out[i] = answer
    return out


def split_run_as(argv: list[str]) -> tuple[str | None, list[str]]:
    """The inverse of as_user(): (owner, the command) for a command that runs through sudo -n -u."""
    if len(argv) > 5 and argv[:3] == ["sudo", "-n", "-u"] and argv[4] == "--":
        return argv[3], argv[5:]
    return None, argv


def launcher_pid(rc: int, stdout: str, stderr: str) -> str:
    """The pid a detaching launcher printed (local jobs, YARN clients); its refusal as SubmitRefused."""
    if rc != 0:
        raise SubmitRefused(first_line(stderr, stdout) or f"launcher exited with status {rc}")
    pid = first_line(stdout)
    if not pid.isdigit():
        raise RuntimeError(f"launcher printed no process id: {first_line(stdout, stderr)!r}")
    return pid


# -- arrays (issue 16): one native submission, tasks tracked one by one -----------------------------

@dataclass(frozen=True)
class NativeTask:
    """One task of a native array, as the batched status call lists it (running, or split off in its own
    line: finished, in error, held, or a lone pending task)."""
    task: int
    state: NativeState
    native_id: str | None = None      # the task in the scheduler (Grid Engine N.T, Slurm's own job id, a pid)
    start_time: str | None = None
    held: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class PendingRun:
    """Tasks first..last (by step) waiting in the scheduler's queue as one line (Grid Engine ``5-1000:1``,
    Slurm ``18_[5-1000%20]``); held: kept from starting by a hold."""
    first: int
    last: int
    step: int = 1
    held: bool = False
    reason: str | None = None         # the scheduler's reason for this line (Slurm %r: JobArrayTaskLimit)
    ended: bool = False               # the line is over: these tasks were cancelled before they started

    def indices(self) -> range:
        return range(self.first, self.last + 1, self.step)


TASK_ACTIONS = ("cancel", "hold", "release")
TASK_ID_VAR = "METASCHED_ARRAY_TASK_ID"


def parse_task_runs(text: str) -> list[tuple[int, int, int]]:
    """``5-10:1,12,14-20:2`` (Grid Engine) or ``5-10,12`` (Slurm, inside the brackets, without %N) as runs."""
    runs = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise ValueError(f"not a task range: {part!r}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        s = int(m.group(3)) if m.group(3) else 1
        runs.append((a, b, s))
    return runs


# The tasks of an array run the user's script through this wrapper (spooled by the scheduler as the array's
# batch script, or run as the binary): it sets $METASCHED_ARRAY_TASK_ID from the scheduler's own variable, then
# runs the script as the scheduler would have: exec'd when it is executable (the kernel honours its #!), else
# through the interpreter its #! line names, else /bin/sh. $1 = the script, the rest its arguments.
RUN_SCRIPT = ('s=$1; shift; [ -x "$s" ] && exec "$s" "$@"; l=; IFS= read -r l < "$s"; '
              'case $l in "#!"*) set -f; set -- ${l#??} "$s" "$@"; set +f; exec "$@";; esac; exec /bin/sh "$s" "$@"')


def task_wrapper(variable: str, run: str, script: str, options) -> str:
    """The body of an array's batch script: export the task index, run the script (``run`` is a ``sh -c``
    program taking the script and its arguments)."""
    return (f'{TASK_ID_VAR}=${variable}; export {TASK_ID_VAR}\n'
            + command_line(["exec", "/bin/sh", "-c", run, "metasched-task", script, *options]) + "\n")


def spooled_submit(directives_sed: str, script: str, body: str, submit_argv: list[str]) -> str:
    """A command line submitting, on stdin, a batch script made of a #! line, the user's script's own
    directives (copied by ``directives_sed``, so resource requests still apply) and ``body``."""
    return (f"{{ printf '%s\\n' '#!/bin/sh'; sed -n -e {shlex.quote(directives_sed)} {shlex.quote(script)}; "
            f"printf '%s' {shlex.quote(body)}; }} | {command_line(submit_argv)}")


def runs_arg(tasks) -> str:
    """Task indices as a Slurm array expression body (``1-3,7-11:2``)."""
    from ..model import compress, runs_text
    return runs_text(compress(tasks))
