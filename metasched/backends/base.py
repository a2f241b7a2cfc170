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
import functools
import re
import shlex
from dataclasses import dataclass

from ..model import Accounting, Job

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
    # job_ids: how the node agent tells which native job a tree is (node_agent.JOB_ID_KINDS: "sge_shepherd",
    # "slurmstepd", "pgid", "yarn"); None: not told apart. "pgid": each job's tree is the process group its
    # native id names (the engine tells the agent which groups are jobs in flight); "yarn": the agent's own rule
    # for YARN containers (children of the NodeManager or of container-executor, never the NodeManager itself),
    # which the regex above also describes.
    job_ids: str | None = None


YARN_CONTAINERS = "yarn"     # ProcessMatcher.job_ids of YARN's containers (the node agent's own rule)


class Backend:
    """Base class; each scheduler type subclasses it. Instances are cheap and stateless.

    What a scheduler is, declared once here by each subclass (``backends.BACKENDS`` lists the subclasses; the
    config, the pre-flight check, the API's schemas and the engine iterate it): ``type`` (the config's and the
    database's name for it), ``inferred_from`` (a regular expression, case-insensitive, for the scheduler names
    its type is inferred from), ``OPTIONS``, ``status_commands`` (what the service runs on the master node as
    itself) and ``sudo_commands`` (what runs there after ``sudo -n -u <owner> --``), the name rule (``tag``),
    its output paths (``output_files``) and its process matcher (``process_matcher``)."""

    type: str = ""
    inferred_from: str | None = None
    OPTIONS: tuple[str, ...] = ("recovery_grace",)   # the option keys this backend reads (the config checks)
    status_commands: tuple[str, ...] = ()
    sudo_commands: tuple[str, ...] = ()
    # the backend starts an array's tasks itself (the local launcher's supervisor), and the poller learns their
    # ends from its files; otherwise the scheduler runs the array and lists its tasks
    supervises_arrays = False
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

    def parse_accounting(self, job: Job, rc: int, stdout: str, stderr: str) -> Accounting | None:
        """What the job used, from the same answer parse_final ended it with (called only once that found a
        final state): only the fields the scheduler reports, each with its source. None: it reports nothing."""
        return None

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

    # -- what a job asks for (resources, native flags, environment, outputs) ---------------------
    scheduler_name = "this scheduler"
    # the resources fields this scheduler can honour; asking for another is a 400 at submit
    RESOURCES: frozenset[str] = frozenset()
    # why a field it cannot honour is refused, when there is more to say than "cannot"
    RESOURCE_HINTS: dict[str, str] = {}

    def spec_problem(self, job: Job) -> tuple[str, str] | None:
        """(field, reason) when this scheduler cannot honour what the job asks for (checked at submit and at
        edit: a 400 naming the field, instead of a job that fails later), else None."""
        for field in job.spec.resources.asked():
            if field not in self.RESOURCES:
                hint = self.RESOURCE_HINTS.get(field, "")
                return (f"resources.{field}",
                        f"resources.{field}: {self.scheduler_name} cannot honour it{'; ' + hint if hint else ''}")
        return self._spec_problem(job)

    def _spec_problem(self, job: Job) -> tuple[str, str] | None:
        if job.spec.native:
            return "native", f"native: {self.scheduler_name} takes no native flags"
        return None

    def output_files(self, job: Job, task: int | None = None) -> "OutputFiles":
        """Where the job's stdout and stderr go (resolved paths, see OutputFiles). The one place each backend
        says it: its submit command and GET /jobs/{id} both read it. An array: its task ``task``'s files, or
        with TASK_SLOT where the index goes (task None)."""
        stdout, stderr = custom_outputs(job, task)
        return OutputFiles(stdout, None if job.spec.join else stderr, joined=job.spec.join)

    def script_needs(self) -> str:
        """What the submitter's script must be for this scheduler: "executable" (run as a program) or "readable"
        (read by the scheduler's client, e.g. Grid Engine's script mode)."""
        return "executable"

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
    return stem + _safe_name(job.name)[: max(0, max_len - len(stem))]


@functools.lru_cache(maxsize=4096)
def _safe_name(name: str) -> str:
    """A name with what schedulers refuse replaced by _ (a pure function of the name: remembered, since every
    job of a page is shown with its tag, and a user's jobs often share a name)."""
    return _UNSAFE_NAME.sub("_", name)


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


_UNUSABLE = re.compile("[\x00\ud800-\udfff]")


def path_reason(job: Job) -> str | None:
    """Paths must be absolute: a relative path or one starting with '-' would be read as an option."""
    if not job.path or not job.path.startswith("/"):
        return f"path must be an absolute path, got {job.path!r}"
    if not job.pwd or not job.pwd.startswith("/"):
        return f"pwd must be an absolute path, got {job.pwd!r}"
    if any(_UNUSABLE.search(t) for t in (job.path, job.pwd, *job.options)):
        # the API refuses both; a lone surrogate could be stored by earlier releases (in options), and
        # no command line can carry it: the job fails with this reason instead of stalling its owner's queue
        return "path, pwd and options must not contain NUL characters or lone surrogates"
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


# -- what a job asks for (issue 14): outputs, environment, native flags, resources --------------------------
# Pure helpers shared by the backends: output path patterns, the job's environment as an argv prefix, a parser
# for native scheduler flags that knows which options take a value. Each backend says, from these, what it
# can honour (spec_problem) and how (its submit_argv).

@dataclass(frozen=True)
class OutputFiles:
    """Where a job's output goes on the scheduler's nodes. None: not known yet (a default file named after the
    native id, before the job was dispatched). joined: stderr goes into stdout (stderr is then None)."""
    stdout: str | None
    stderr: str | None
    joined: bool = False


_PATTERN_CODE = re.compile(r"%(.?)", re.S)
# Where an array task's index (%a) goes in a resolved output path, until a backend writes it its own way (Grid
# Engine's $TASK_ID, Slurm's %a, the local supervisor's number). NUL: no pattern holds one (pattern_problem).
TASK_SLOT = "\x00"


def pattern_problem(pattern: str, array: bool = False) -> str | None:
    """Why an output path pattern is unusable, or None. %j (our job id), %x (the job name), %a (an array task's
    index: only for arrays, where each task needs a file of its own), %% (a percent)."""
    if not pattern or "\x00" in pattern or "\n" in pattern:
        return "must be a path without NUL or newline characters"
    codes = {m.group(1) for m in _PATTERN_CODE.finditer(pattern)}
    for code in sorted(codes):
        if code not in ("j", "x", "a", "%"):
            return (f"%{code} is not a pattern metasched knows (%j: the job id, %x: the job name, %a: an array "
                    f"task's index, %%: a percent sign)")
    if "a" in codes and not array:
        return "%a is an array task's index: this job is not an array"
    if array and "a" not in codes:
        return "each task of an array writes a file of its own: put %a (the task's index) in the pattern"
    return None


def resolve_output(pattern: str, job: Job, task: int | None = None) -> str:
    """An output pattern as a path: %j our job id, %x the job name, %a the array task's index (``task``; None:
    TASK_SLOT), %% a percent sign; relative to pwd."""
    def code(m):
        return {"j": str(job.id), "x": job.name, "a": TASK_SLOT if task is None else str(task), "%": "%"}[m.group(1)]
    path = _PATTERN_CODE.sub(code, pattern)
    return _posixpath.normpath(_posixpath.join(job.pwd, path))


def custom_outputs(job: Job, task: int | None = None) -> tuple[str | None, str | None]:
    """The job's own output paths, resolved (None: the scheduler's default file for that stream); an array's
    with ``task``'s index, or TASK_SLOT where it goes."""
    spec = job.spec
    return (resolve_output(spec.stdout, job, task) if spec.stdout else None,
            resolve_output(spec.stderr, job, task) if spec.stderr else None)


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
# What sudo adds to the environment it runs a command in: never passed on to a job.
SUDO_VARS = ("SUDO_COMMAND", "SUDO_USER", "SUDO_UID", "SUDO_GID")


# Runs a scheduler client with the job's variables in its environment (then the site's env option, which wins),
# so that the scheduler's own mechanism (qsub -V / -v NAME, sbatch --export) passes them on to the job. The
# values are positional parameters set with `export "$1"`: they never meet the shell's parsing, commas, quotes
# and newlines included. The client is looked up on the PATH sudo gave, before the job's PATH is set.
# $1 = 1 to remove what sudo added (SUDO_*: for a client that exports its whole environment), $2 = n, then n
# NAME=value words, the client, its arguments.
ENV_SCRIPT = ('u=$1; n=$2; shift 2; i=$((n + 1)); eval "c=\\${$i}"; c=$(command -v "$c") || exit 127; '
              '[ "$u" = 1 ] && unset SUDO_COMMAND SUDO_USER SUDO_UID SUDO_GID; '
              'while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done; shift; exec "$c" "$@"')


def client_argv(options: dict, name: str, job: Job, *, strip_sudo: bool = False) -> list[str]:
    """argv prefix running scheduler client ``name`` for this job: scheduler_command() when the job has no
    variables of its own (and nothing to strip), else through ENV_SCRIPT (``sh``, which sudo already allows)."""
    pairs = [f"{k}={v}" for k, v in job.spec.env]
    if not pairs and not strip_sudo:
        return scheduler_command(options, name)
    site = options.get("env") or {}
    for key in site:
        if not _ENV_KEY.match(str(key)):
            raise ValueError(f"env: {key!r} is not a valid environment variable name")
    pairs += [f"{k}={v}" for k, v in site.items()]
    client = _posixpath.join(options["bin_dir"], name) if options.get("bin_dir") else name
    return ["sh", "-c", ENV_SCRIPT, "sh", "1" if strip_sudo else "0", str(len(pairs)), *pairs, client]


def export_names(job: Job) -> list[str]:
    """The variables a job gets by name: the named ones of the submission environment, then its own."""
    export = job.spec.export
    named = list(export) if isinstance(export, tuple) else []
    return named + [k for k, _ in job.spec.env if k not in named]


def memory_text(n: int, smallest: str = "K") -> str:
    """Bytes in the largest binary unit that holds them whole, at least ``smallest`` (rounded up to a whole one
    of those): 512M, 2G, 1536K."""
    units = "KMGT"
    step = 1024 ** (units.index(smallest) + 1)
    value, i = -(-n // step), units.index(smallest)
    while i + 1 < len(units) and value % 1024 == 0:
        value, i = value // 1024, i + 1
    return f"{value}{units[i]}"


def hms(seconds: int) -> str:
    """Seconds as [D-]HH:MM:SS (Slurm's --time; Grid Engine's h_rt takes it too)."""
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}-" if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


@dataclass(frozen=True)
class NativeFlag:
    """One option of a native flag list: where it is (native[index]), its canonical name, and its value."""
    index: int
    name: str
    value: str | None = None


class NativeProblem(ValueError):
    def __init__(self, index: int, reason: str):
        super().__init__(f"native[{index}]: {reason}")
        self.index, self.reason = index, reason


NOT_AN_OPTION = "is not an option (the script is `path` and its arguments `options`)"


def parse_sge_native(native: tuple[str, ...], arity: dict[str, int]) -> list[NativeFlag]:
    """qsub's options: each a token of its own followed by its values (arity: how many; ``-binding`` takes an
    optional first word). An option qsub does not have is refused: its values could not be told apart."""
    flags, i = [], 0
    while i < len(native):
        tok = native[i]
        if not tok.startswith("-") or tok == "-":
            raise NativeProblem(i, f"{tok!r} {NOT_AN_OPTION}")
        if tok not in arity:
            raise NativeProblem(i, f"{tok} is not a qsub option metasched knows")
        n = arity[tok]
        if tok == "-binding" and i + 1 < len(native) and native[i + 1] in ("env", "pe", "set"):
            n = 2
        if n and i + n >= len(native):
            raise NativeProblem(i, f"{tok} needs {n} value{'s' if n > 1 else ''}")
        value = " ".join(native[i + 1:i + 1 + n]) if n else None
        flags.append(NativeFlag(i, tok, value))
        i += 1 + n
    return flags


def parse_getopt_native(native: tuple[str, ...], short: dict[str, bool], long: dict[str, str],
                        owned_long: set[str], program: str) -> list[NativeFlag]:
    """getopt_long's reading of a native flag list, as the scheduler client (sbatch) will read it.

    short: option letter -> takes a value (``-Jname``, ``-J name``, ``-kJ name``); an unknown letter is refused
    (its value could not be told apart). long: name -> "required" | "optional" | "none"; getopt_long also takes
    an unambiguous abbreviation (``--job`` for ``--job-name``): an abbreviation of a name in owned_long is refused
    whatever else it could mean. An unknown long option is taken as given (``--name=value`` or a flag without a
    value); a token after it that is not an option is refused ("write --name=value")."""
    flags, i = [], 0
    while i < len(native):
        tok = native[i]
        if tok == "--" or tok == ":" or not tok.startswith("-") or tok == "-":
            raise NativeProblem(i, f"{tok!r} {NOT_AN_OPTION}" if tok != ":" else
                                "':' separates the parts of a heterogeneous job, which metasched does not track")
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            canonical = name if name in long else None
            if canonical is None:
                matches = [n for n in long if n.startswith(name)] if name else []
                owned = [n for n in owned_long if n.startswith(name)] if name else []
                if owned:
                    canonical = owned[0] if len(matches) <= 1 else None
                    if canonical is None:
                        raise NativeProblem(i, f"--{name} may abbreviate --{owned[0]}, which metasched sets")
                elif len(matches) == 1:
                    canonical = matches[0]
            kind = long.get(canonical, "optional" if eq else "none") if canonical else ("optional" if eq else "none")
            shown = f"--{canonical or name}"
            if eq:
                if kind == "none":
                    raise NativeProblem(i, f"{shown} takes no value")
                flags.append(NativeFlag(i, shown, value))
                i += 1
                continue
            if kind == "required":
                if i + 1 >= len(native):
                    raise NativeProblem(i, f"{shown} needs a value")
                flags.append(NativeFlag(i, shown, native[i + 1]))
                i += 2
                continue
            flags.append(NativeFlag(i, shown, None))
            if canonical is None and i + 1 < len(native) and not native[i + 1].startswith("-"):
                raise NativeProblem(i + 1, f"{native[i + 1]!r} {NOT_AN_OPTION}; if it is the value of {shown}, "
                                           f"write {shown}=VALUE")
            i += 1
            continue
        j, consumed = 1, 1
        while j < len(tok):
            c = tok[j]
            if c not in short:
                raise NativeProblem(i, f"-{c} is not a {program} option metasched knows")
            if short[c]:
                rest = tok[j + 1:]
                if rest:
                    flags.append(NativeFlag(i, f"-{c}", rest))
                elif i + 1 < len(native):
                    flags.append(NativeFlag(i, f"-{c}", native[i + 1]))
                    consumed = 2
                else:
                    raise NativeProblem(i, f"-{c} needs a value")
                break
            flags.append(NativeFlag(i, f"-{c}", None))
            j += 1
        i += consumed
    return flags


def native_problem(flags: list[NativeFlag], owned: dict[str, str], resource_flags: dict[str, str], spec,
                   forbid) -> str | None:
    """The first native flag this job may not use, as 'native[i]: why', or None.

    owned: option -> why it is refused (metasched sets it itself: which field replaces it); resource_flags: option ->
    the resources field it also sets (refused only when the job asks for that field too); forbid: the site's
    list of refused options (option names, or "*" for every native flag)."""
    forbid = set(forbid or ())
    for f in flags:
        if f.name in owned:
            return f"native[{f.index}]: {f.name}: {owned[f.name]}"
        if "*" in forbid or f.name in forbid:
            return f"native[{f.index}]: this site does not allow {f.name} (native_forbid)"
        field = resource_flags.get(f.name)
        if field and getattr(spec.resources, field) is not None:
            return f"native[{f.index}]: {f.name} asks for what resources.{field} asks for; give one of them"
    return None


# -- reading a job's output on the scheduler's master node, as its owner ---------------------------------------
# $1 = file, $2 = offset (negative: from the end), $3 = most bytes. One line "ok <size> <start>" and the bytes in
# base64 on the next; or "missing" (no such file yet); or "refused <why>" (not a regular file: a FIFO would
# block, a device never end). The transport's timeout bounds the whole read.
READ_OUTPUT = ('f=$1; o=$2; n=$3; [ -e "$f" ] || { echo missing; exit 0; }; '
               '[ -f "$f" ] || { echo "refused not a regular file"; exit 0; }; '
               '[ -r "$f" ] || { echo "refused not readable by the job\'s owner"; exit 0; }; '
               's=$(stat -L -c %s -- "$f") || exit 1; '
               'if [ "$o" -lt 0 ]; then o=$((s + o)); [ "$o" -lt 0 ] && o=0; fi; [ "$o" -gt "$s" ] && o=$s; '
               'echo "ok $s $o"; tail -c "+$((o + 1))" -- "$f" | head -c "$n" | base64 -w 0; echo')


@dataclass(frozen=True)
class OutputChunk:
    path: str
    size: int           # the file's size when it was read
    offset: int         # where data starts
    data: bytes


def read_output_argv(path: str, offset: int, length: int, run_as: str | None) -> list[str]:
    return as_user(["sh", "-c", READ_OUTPUT, "sh", path, str(int(offset)), str(int(length))], run_as)


class OutputRefused(RuntimeError):
    """The output path names something that is not a readable regular file (a FIFO, a device, a directory)."""


def parse_read_output(path: str, rc: int, stdout: str, stderr: str) -> OutputChunk | None:
    """The chunk read; None when the file does not exist (yet); OutputRefused when it is not a readable regular
    file; RuntimeError when it could not be read (sudo refused, an answer cut short)."""
    import base64 as _base64
    head, _, rest = (stdout or "").partition("\n")
    if rc == 0 and head == "missing":
        return None
    if rc == 0 and head.startswith("refused "):
        raise OutputRefused(f"{path} is {head[len('refused '):]}")
    m = re.match(r"^ok (\d+) (\d+)$", head)
    if rc != 0 or not m:
        raise RuntimeError(f"cannot read {path}: {first_line(stderr, stdout) or f'exit status {rc}'}")
    try:
        data = _base64.b64decode(rest.strip(), validate=True)
    except ValueError:
        raise RuntimeError(f"cannot read {path}: the answer was cut short") from None
    return OutputChunk(path, int(m.group(1)), int(m.group(2)), data)


# -- the submit's own checks, as the owner on the scheduler's master node (option check_paths) ------------------
# Before the scheduler's client runs: pwd is a directory the owner can enter, each output file's directory one
# the owner can write, and the script is there and readable (mode read: the client reads it, as sbatch and
# qsub's script mode do) or executable (mode exec: Grid Engine's binary mode runs it as it is). A refusal is
# one line saying which mistake it is, and nothing is submitted. Frontends that share /home with their nodes
# see what the nodes will see; where the files live only on the compute nodes, set check_paths: false.
# ms_check <mode> <script> <pwd> <n> <n output dirs> <the client and its arguments>
CHECK_FUNCTION = (
    'ms_check() { m=$1; p=$2; d=$3; n=$4; shift 4; '
    'if [ ! -d "$d" ]; then echo "metasched: no such directory: pwd $d" >&2; return 1; fi; '
    'if [ ! -x "$d" ]; then echo "metasched: cannot enter pwd $d" >&2; return 1; fi; '
    'while [ "$n" -gt 0 ]; do '
    'if [ ! -d "$1" ]; then echo "metasched: no such directory for the job\'s output: $1" >&2; return 1; fi; '
    'if [ ! -w "$1" ] || [ ! -x "$1" ]; then echo "metasched: cannot write pwd $1 (the job\'s output goes there)" >&2; '
    'return 1; fi; shift; n=$((n - 1)); done; '
    'if [ ! -e "$p" ]; then echo "metasched: no such file: $p" >&2; return 1; fi; '
    'if [ "$m" = exec ] && { [ ! -f "$p" ] || [ ! -x "$p" ]; }; then '
    'echo "metasched: not executable: $p (chmod +x $p)" >&2; return 1; fi; '
    'if [ "$m" = read ] && [ ! -r "$p" ]; then echo "metasched: not readable: $p (chmod u+r $p)" >&2; return 1; fi; '
    '"$@"; }'
)
CHECK_SCRIPT = CHECK_FUNCTION + '; ms_check "$@"'


def check_args(mode: str, job: Job, files: "OutputFiles") -> list[str]:
    """ms_check's arguments for a job: the directories its output files are written in (pwd for a default file
    the scheduler names after its id), each once; an array's per-task directories (named with %a) are not known
    before its tasks run: not checked."""
    dirs = []
    for path in (files.stdout, files.stderr):
        d = _posixpath.dirname(path) if path else job.pwd
        if TASK_SLOT in d:
            continue
        if d not in dirs:
            dirs.append(d)
    return [mode, job.path, job.pwd, str(len(dirs)), *dirs]


class CheckedClientSubmit:
    """A submit through the scheduler's own client (qsub, sbatch), preceded by ms_check unless check_paths is
    false; an array goes through its batch line. The backend provides ``_check`` (ms_check's arguments, or
    none), ``_client_argv`` and ``_array_line``."""

    batch_preamble = CHECK_FUNCTION

    def submit_argv(self, job: Job, run_as: str | None) -> list[str]:
        if job.array_spec:
            return as_user(["sh", "-c", f"{CHECK_FUNCTION}; {self.batch_line(job)}"], run_as)
        check = self._check(job)
        argv = self._client_argv(job)
        return as_user(["sh", "-c", CHECK_SCRIPT, "sh", *check, *argv] if check else argv, run_as)

    def batch_line(self, job: Job):
        check = self._check(job)
        if job.array_spec:
            line = self._array_line(job)
            return command_line(["ms_check", *check, "sh", "-c", line]) if check else line
        return command_line((["ms_check", *check] if check else []) + self._client_argv(job))


# -- accounting helpers (issue 15) -------------------------------------------------------------------

_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")


def leading_number(text: str | None) -> float | None:
    """The number a scheduler's field starts with ('8s' -> 8.0, '0.002s' -> 0.002), or None."""
    m = _NUMBER.match(text or "")
    return float(m.group(1)) if m else None


def duration_seconds(text: str | None) -> float | None:
    """Slurm's [D-]HH:MM:SS (also MM:SS) as seconds, or None ('Unknown', 'INVALID')."""
    m = re.match(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$", (text or "").strip())
    if not m:
        return None
    d, h, mi, sec = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi) * 60 + float(sec)


def iso_seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one ISO 8601 UTC time to another (both as the scheduler reported them), or None."""
    if not start or not end:
        return None
    try:
        a = _datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = _datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())


def epoch_to_utc_iso(value: float) -> str:
    return _datetime.fromtimestamp(value, _timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def signal_of(exit_status: int | None) -> int | None:
    """The signal that killed a job whose exit status follows the shell's convention (128 + signal), or None."""
    if exit_status is None or not 128 < exit_status < 128 + 65:
        return None
    return exit_status - 128
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
