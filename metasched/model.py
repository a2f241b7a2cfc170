"""Domain values shared by every layer: job states, their allowed transitions, plain records.

Nothing here does I/O. The web layer serialises these, the repository builds them from rows,
the policies and backends consume them.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field


class JobStatus(str, enum.Enum):
    TO_BE_QUEUED = "TO_BE_QUEUED"   # waiting in our queue
    HELD = "HELD"                   # waiting in our queue, not eligible until released
    DISPATCHING = "DISPATCHING"     # committed as being submitted; the native submit may or may not have happened
    QUEUED = "QUEUED"               # in the scheduler's queue
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def dispatched(self) -> bool:
        return self in (JobStatus.DISPATCHING, JobStatus.QUEUED, JobStatus.RUNNING)


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.ERROR, JobStatus.CANCELLED})
UNDISPATCHED_STATES = frozenset({JobStatus.TO_BE_QUEUED, JobStatus.HELD})
ACTIVE_STATES = frozenset({JobStatus.DISPATCHING, JobStatus.QUEUED, JobStatus.RUNNING})

S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.TO_BE_QUEUED: frozenset({S.HELD, S.DISPATCHING, S.CANCELLED, S.ERROR}),
    S.HELD: frozenset({S.TO_BE_QUEUED, S.CANCELLED}),
    S.DISPATCHING: frozenset({S.QUEUED, S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED, S.TO_BE_QUEUED}),
    S.QUEUED: frozenset({S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.ERROR: frozenset(),
    S.CANCELLED: frozenset(),
}
del S


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[old]


class Policy(str, enum.Enum):
    EXCLUSIVE = "exclusive"
    BEST_EFFORT = "best_effort"
    SHARED = "shared"
    DYNAMIC = "dynamic"


# -- what a job asks for (issue 14): resources, native flags, environment, outputs ---------------------------

@dataclass(frozen=True)
class Resources:
    """Portable resources, after PSI/J's ResourceSpecV1 and JobAttributes (in brackets); None: not asked for,
    the scheduler's default. Each backend maps them to its own flags, and refuses what it cannot honour."""
    nodes: int | None = None            # [node_count]
    tasks: int | None = None            # [process_count] tasks in all
    cores_per_task: int | None = None   # [cpu_cores_per_process]
    memory: int | None = None           # bytes per node
    walltime: int | None = None         # seconds [duration]
    gpus_per_node: int | None = None
    native_queue: str | None = None     # the scheduler's own queue or partition [queue_name]
    account: str | None = None          # the account or project charged [project_name]

    def asked(self) -> dict:
        """The fields asked for, in declaration order (a new dict each time: callers may change it)."""
        return dict(self._asked)

    @functools.cached_property
    def _asked(self) -> tuple:
        """asked()'s items, found once per value (it is frozen): a page of 100 jobs asked it 100 times, 4 us
        each; jobs of one result set that share a spec share its Resources too (repository.rows_to_jobs)."""
        return tuple((f, v) for f in RESOURCE_FIELDS if (v := getattr(self, f)) is not None)

    @property
    def slots(self) -> int:
        """Cores in all on one node's worth of the job: tasks x cores per task (1 each when not asked)."""
        return (self.tasks or 1) * (self.cores_per_task or 1)


RESOURCE_FIELDS = ("nodes", "tasks", "cores_per_task", "memory", "walltime", "gpus_per_node", "native_queue", "account")
EXPORT_CHOICES = ("all", "none")


@dataclass(frozen=True)
class JobSpec:
    """Everything a job asks of its scheduler besides its script: stored as one JSON column (jobs.spec).

    env: variables the job gets, set through the scheduler's own mechanism (never a shell). export: what it also
    inherits of the submission environment on the scheduler's side (the scheduler client's, as the owner):
    "all", "none", a tuple of names, or None for the scheduler's own default. stdout/stderr: path patterns
    (absolute, or relative to pwd; %j = our job id, %x = the job name, %% = %); None: the scheduler's default
    file. join: stderr goes into stdout."""
    resources: Resources = Resources()
    native: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    export: str | tuple[str, ...] | None = None
    stdout: str | None = None
    stderr: str | None = None
    join: bool = False

    def to_dict(self) -> dict:
        """The stored (and shown) form: only what was asked for."""
        out: dict = {}
        if self.resources._asked:
            out["resources"] = self.resources.asked()
        if self.native:
            out["native"] = list(self.native)
        if self.env:
            out["env"] = dict(self.env)
        if self.export is not None:
            out["export"] = self.export if isinstance(self.export, str) else list(self.export)
        for key in ("stdout", "stderr"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.join:
            out["join"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict | None) -> "JobSpec":
        if not d:
            return NO_SPEC
        export = d.get("export")
        return cls(resources=Resources(**{k: v for k, v in (d.get("resources") or {}).items() if k in RESOURCE_FIELDS}),
                   native=tuple(d.get("native") or ()), env=tuple((d.get("env") or {}).items()),
                   export=tuple(export) if isinstance(export, list) else export,
                   stdout=d.get("stdout"), stderr=d.get("stderr"), join=bool(d.get("join")))

    def env_size(self) -> int:
        return sum(len(k) + len(v) + 2 for k, v in self.env)


NO_SPEC = JobSpec()


@dataclass(slots=True)      # not frozen: building a page of jobs is ~10% faster; treat it as read-only
class Job:
    id: int
    name: str
    queue_id: int
    owner: str
    status: JobStatus
    path: str
    options: tuple[str, ...] = ()
    pwd: str = "/tmp"
    scheduler_job_id: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    cancel_requested: bool = False
    created_at: str = ""
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str = ""
    version: int = 1
    token: str | None = None        # random, in the native tag: only this database's jobs are ever adopted
    attempts: int = 0               # dispatch attempts so far
    # -- issue 14: what the job asks for (jobs.spec, one JSON column) --
    spec: JobSpec = NO_SPEC
    # -- accounting (issue 15): what the job used, recorded with its final state (None: nothing reported).
    #    Not a column: the repository builds it from the acct_* columns (see Accounting).
    accounting: "Accounting | None" = None
    # -- workflows (issue 16): arrays and dependencies ---------------------------------------------
    array_spec: str | None = None   # "1-1000:2%50" (ArraySpec): an array of tasks in one submission; None: one job
    depends_on: tuple["Dependency", ...] = ()   # what it waits for (evaluated by the poller, any queue)


@dataclass(frozen=True)
class Queue:
    """One scheduler, as configured (position None: no longer in the config) and as last checked."""
    id: int
    name: str
    type: str                          # its backend's type (backends.TYPES)
    master_node_id: int
    weight: int
    position: int | None
    reachable: bool | None = None      # its last batched status call worked (None: not checked yet)
    last_error: str | None = None
    usage: float = 0.0                 # decayed CPU usage (the dynamic policy)
    unreachable_since: str | None = None   # first failed status call of the current run of failures


@dataclass(frozen=True)
class Node:
    id: int
    address: str
    port: int
    position: int | None
    is_master: bool
    reachable: bool | None = None
    last_seen: str | None = None
    last_error: str | None = None
    load: tuple[float, float, float] | None = None
    ncpus: int | None = None
    enforcement: dict = field(default_factory=dict)
    transport: str = "ssh"             # ssh | local
    metrics: dict = field(default_factory=dict)   # the node's latest figures (issue 15: NodeMetrics.as_dict)


@dataclass(frozen=True)
class JobEvent:
    """One change of a job (ids only ever grow: job_events is the outbox later readers follow)."""
    id: int
    job_id: int
    at: str
    old_status: str | None
    new_status: str
    actor: str
    reason: str | None
    task: int | None = None          # an array task's event (None: the job's own)


@dataclass(frozen=True)
class ClusterEvent:
    id: int
    at: str
    actor: str
    kind: str
    detail: dict


@dataclass(frozen=True)
class Setting:
    key: str
    value: object
    updated_at: str
    updated_by: str


@dataclass(frozen=True)
class Token:
    """A bearer token as stored (its secret only as a hash, never here)."""
    id: int
    user: str
    description: str = ""
    created_by: str = ""
    created_at: str = ""
    expires_at: str = ""
    revoked_at: str | None = None
    last_used_at: str | None = None


@dataclass(frozen=True)
class ForeignJob:
    """A job submitted to a scheduler directly (plain qsub / sbatch), as its last status call listed it."""
    id: int
    queue_id: int
    native_id: str
    owner: str
    name: str
    state: str
    native_queue: str
    start_time: str | None
    first_seen: str
    last_seen: str


@dataclass(frozen=True)
class LeaseRecord:
    """The poller lease row (metasched/engine/lease.py decides what it means)."""
    holder: str
    epoch: int
    acquired_at: str
    renewed_at: str
    expires_at: str
    host: str = ""
    boot_id: str = ""
    pid: int = 0
    pid_start: int = 0
    expires_mono: float = 0.0


@dataclass(frozen=True)
class PollCycle:
    id: int
    holder: str
    started_at: str
    duration_ms: float
    summary: dict
    errors: dict


# -- what a job used (issue 15) ------------------------------------------------------------------------

ACCOUNTING_FIELDS = ("start_time", "end_time", "nodes", "wall_seconds", "cpu_user_seconds", "cpu_system_seconds",
                     "cpu_seconds", "max_rss_bytes", "exit_signal")


@dataclass(frozen=True)
class Accounting:
    """What a finished job used, as its scheduler reported it. A field the scheduler did not report is None,
    never estimated; ``sources`` names where each reported field came from (``qacct``, ``scontrol``,
    ``jobcomp``, ``rusage``, ``wrapper``, ``yarn``, ``agent``: the node agent's own measurements while the job
    ran). ``extra`` holds what only one scheduler reports (YARN's allocation in MB-seconds, Grid Engine's
    maxvmem and failed code...).

    cpu_seconds is user + system when both are reported, or the scheduler's own total. Times are ISO 8601 UTC.
    """
    start_time: str | None = None
    end_time: str | None = None
    nodes: str | None = None                 # as the scheduler names them (a Slurm host list stays compressed)
    wall_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    exit_signal: int | None = None
    sources: dict = field(default_factory=dict)    # field name -> source
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, source: str, extra: dict | None = None, **values) -> "Accounting":
        """An Accounting whose reported fields (the non-None ones) all come from ``source``."""
        reported = {k: v for k, v in values.items() if v is not None}
        unknown = set(reported) - set(ACCOUNTING_FIELDS)
        if unknown:
            raise TypeError(f"not an accounting field: {', '.join(sorted(unknown))}")
        if "cpu_seconds" not in reported and "cpu_user_seconds" in reported and "cpu_system_seconds" in reported:
            reported["cpu_seconds"] = reported["cpu_user_seconds"] + reported["cpu_system_seconds"]
        return cls(**reported, sources={k: source for k in reported}, extra=dict(extra or {}))

    def reported(self) -> dict:
        return {k: getattr(self, k) for k in ACCOUNTING_FIELDS if getattr(self, k) is not None}

    def completed_by(self, other: "Accounting | None") -> "Accounting":
        """These values, and ``other``'s for the fields these do not report (each keeps its own source)."""
        if other is None:
            return self
        mine = self.reported()
        values = {**{k: v for k, v in other.reported().items() if k not in mine}, **mine}
        sources = {**{k: other.sources.get(k, "") for k in values if k not in mine},
                   **{k: self.sources.get(k, "") for k in mine}}
        return Accounting(**values, sources=sources, extra={**other.extra, **self.extra})


@dataclass(frozen=True)
class JobUsage:
    """The latest live measurement of a job by the node agents (every poll cycle while it runs)."""
    job_id: int
    at: str                          # UTC, when measured
    nodes: tuple[str, ...]           # where its processes were seen
    cpu_seconds: float               # CPU time of its processes so far (user + system, the largest total seen)
    cpu_percent: float | None        # over the last cycle, 100 = one core (None: no earlier measurement)
    rss_bytes: int                   # resident memory of its processes now
    max_rss_bytes: int               # the largest resident memory seen
    pids: int
    samples: int = 0                 # samples stored (GET /jobs/{id}/metrics)
    stride: int = 1                  # one stored sample every `stride` sample intervals (downsampling)


@dataclass(frozen=True)
class JobSample:
    """One stored sample of a running job (downsampled, bounded: see config metrics)."""
    at: str
    cpu_seconds: float
    cpu_percent: float | None
    rss_bytes: int
    pids: int
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class ShareSample:
    """The CPU one scheduler's group got on one node over a span, next to the share the policy targeted."""
    node_id: int
    queue_id: int
    seconds: float                   # how long the span was (the nodes' boot clock)
    cpu_seconds: float               # CPU its group used in it
    target_seconds: float            # target share (percent) x seconds: target = target_seconds / seconds


# -- events out (issue 17): the event log everyone follows, what a job asked to be told, deliveries ---------

NOTIFY_ON = ("start", "end", "fail")     # RUNNING; any final state; ERROR


@dataclass(frozen=True)
class FeedEvent:
    """One row of the event log (``events``: one id space for job and cluster events, in commit order).

    A job event carries its job's owner (who may see it besides admins), name, queue and, once final, its exit
    code; a cluster event (``cluster_kind``: mode, node_down, node_up) its detail, and everyone may see it."""
    id: int
    kind: str                           # job | cluster
    at: str
    actor: str
    job_id: int | None = None
    owner: str | None = None
    job_name: str | None = None
    queue_id: int | None = None
    old_status: str | None = None
    new_status: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    cluster_kind: str | None = None
    detail: dict | None = None


@dataclass(frozen=True)
class JobNotify:
    """What a job's owner asked to be told (``notify`` at submit), and where."""
    job_id: int
    on: tuple[str, ...]
    email: str | None = None
    webhook: str | None = None
    secret: str | None = None           # the webhook's HMAC-SHA256 key


@dataclass(frozen=True)
class Delivery:
    """One event to one target (a webhook URL or a mail address), sent at least once by the lease holder."""
    id: int
    event_id: int
    job_id: int | None
    channel: str                        # webhook | email
    hook: str | None                    # the site hook's name; None: the job's own notify
    address: str
    body: dict
    state: str                          # pending | delivered | failed
    attempts: int
    created_at: str
    next_at: str
    last_error: str | None = None
    delivered_at: str | None = None
    secret: str | None = None           # the job's own webhook secret (site hooks' are in the config)
# -- workflows (issue 16): job arrays, dependencies ------------------------------------------------------

import re as _re

_ARRAY_RE = _re.compile(r"^(\d{1,9})(?:-(\d{1,9})(?::(\d{1,9}))?)?(?:%(\d{1,9}))?(/held)?$")


@dataclass(frozen=True)
class ArraySpec:
    """An array of tasks: ``first-last:step%limit`` (Slurm's notation, one range), e.g. ``1-1000:2%50`` is
    tasks 1, 3, ..., 999 with at most 50 running at once. ``limit`` None: no throttle.

    ``held`` is never given by users: the poller submits an array held (qsub -h, sbatch --hold, a supervisor
    that waits for its control file) when some of its tasks were held or cancelled before the dispatch, and
    then releases the others; its text form carries ``/held`` only on the way to the backend."""
    first: int
    last: int
    step: int = 1
    limit: int | None = None
    held: bool = False

    @classmethod
    def parse(cls, text: str, *, internal: bool = False) -> "ArraySpec":
        """ValueError with the reason when ``text`` is not an array spec."""
        m = _ARRAY_RE.match(text.strip() if isinstance(text, str) else "")
        if not m or (m.group(5) and not internal):
            raise ValueError(f"expected FIRST[-LAST[:STEP]][%LIMIT] (e.g. 1-1000:2%50), got {text!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        step = int(m.group(3)) if m.group(3) is not None else 1
        limit = int(m.group(4)) if m.group(4) is not None else None
        if first < 1:
            raise ValueError("task indices start at 1 (Grid Engine's do)")
        if last < first:
            raise ValueError(f"the last task {last} comes before the first {first}")
        if step < 1:
            raise ValueError("the step must be 1 or more")
        if limit is not None and limit < 1:
            raise ValueError("the limit of running tasks (%N) must be 1 or more")
        last = first + (last - first) // step * step       # 1-10:4 is 1, 5, 9
        return cls(first, last, step, limit, bool(m.group(5)))

    @property
    def count(self) -> int:
        return (self.last - self.first) // self.step + 1

    def indices(self) -> range:
        return range(self.first, self.last + 1, self.step)

    def __contains__(self, task: int) -> bool:
        return self.first <= task <= self.last and (task - self.first) % self.step == 0

    @property
    def range_text(self) -> str:
        """``first-last:step`` (qsub -t; sbatch --array without the throttle)."""
        if self.first == self.last:
            return str(self.first)
        return f"{self.first}-{self.last}" + (f":{self.step}" if self.step != 1 else "")

    def __str__(self) -> str:
        return self.range_text + (f"%{self.limit}" if self.limit is not None else "") + ("/held" if self.held else "")


def compress(tasks) -> list[tuple[int, int, int]]:
    """Task indices as few (first, last, step) runs as a simple scan finds: [1, 2, 3, 7, 9, 11] ->
    [(1, 3, 1), (7, 11, 2)]. For scheduler commands that take ranges (qdel -t, scontrol N_[..])."""
    xs = sorted(set(tasks))
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < len(xs):
        if i + 1 == len(xs):
            out.append((xs[i], xs[i], 1))
            break
        step = xs[i + 1] - xs[i]
        j = i + 1
        while j + 1 < len(xs) and xs[j + 1] - xs[j] == step:
            j += 1
        if j == i + 1 and step != 1 and j + 1 < len(xs):
            out.append((xs[i], xs[i], 1))      # a lone pair with a gap: let the next run start at xs[i + 1]
            i += 1
            continue
        out.append((xs[i], xs[j], step))
        i = j + 1
    return out


def runs_text(runs: list[tuple[int, int, int]]) -> str:
    """``1-3,7-11:2`` (Slurm's array expressions)."""
    return ",".join(str(a) if a == b else f"{a}-{b}" + (f":{s}" if s != 1 else "") for a, b, s in runs)


@dataclass(frozen=True)
class Reason:
    """Why a job is not dispatched (or not started) now, as data. ``code``: unconfigured, unreachable,
    exclusive, dispatch_limit (the policies), dependency, backoff, held, throttle, dispatching. ``text`` stays
    the same while the cause does (it is recorded as the job's note, and as an event when it changes);
    ``detail`` says it with the numbers of the moment ("Slurm has 3 jobs in flight")."""
    code: str
    text: str
    detail: str = ""


DEPENDENCY_KINDS = ("ok", "notok", "any", "started")


@dataclass(frozen=True)
class Dependency:
    """One thing a job waits for: ``kind`` of job ``job_id`` (or of its task ``task``):
    ok (ended COMPLETED), notok (ended ERROR or CANCELLED), any (ended), started (began running, or ended:
    like Slurm's ``after``, a cancelled job releases its dependants). An array stands for all its tasks."""
    kind: str
    job_id: int
    task: int | None = None

    @property
    def target(self) -> str:
        return f"{self.job_id}.{self.task}" if self.task is not None else str(self.job_id)


@dataclass(slots=True)
class ArrayTask:
    """One task of an array job, as tracked (metasched/lifecycle.py writes it, like a job)."""
    job_id: int
    task: int
    status: JobStatus
    native_id: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    cancel_requested: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str = ""
    version: int = 1

    @property
    def ref(self) -> str:
        return f"{self.job_id}.{self.task}"


S = JobStatus
# A task is waiting (TO_BE_QUEUED before its array is submitted, QUEUED after; HELD: kept from starting),
# then RUNNING, then ended. What the scheduler says is a fact: a held task that started anyway is RUNNING.
TASK_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.TO_BE_QUEUED: frozenset({S.HELD, S.QUEUED, S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.HELD: frozenset({S.TO_BE_QUEUED, S.QUEUED, S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.QUEUED: frozenset({S.HELD, S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.DISPATCHING: frozenset(),
    S.COMPLETED: frozenset(),
    S.ERROR: frozenset(),
    S.CANCELLED: frozenset(),
}
del S
