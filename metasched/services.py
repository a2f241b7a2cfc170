"""Use cases: one method per thing a caller can do, one transaction each.

Authorization lives here (not in the resources): a user sees and touches only their own jobs
(another user's job is reported as not found), only admins change the cluster mode or act for others.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import math
import posixpath
import re
import threading
from dataclasses import dataclass

from typing import NamedTuple

from . import dependencies, events as EV, lifecycle, policies
from .config import Config
from .db.core import Database, format_time, parse_time, utcnow
from .db.repository import Repository
from .errors import (Conflict, Forbidden, Invalid, JobStateConflict, NoOutput, NotFound, Unauthenticated,
                     Unavailable)
from .identity import Authority, Caller, hash_secret, new_secret
from .model import (ACTIVE_STATES, DEPENDENCY_KINDS, FINAL_STATES, NO_SPEC, UNDISPATCHED_STATES,
                    ArraySpec, ArrayTask, can_transition, ClusterEvent, Delivery, Dependency, FeedEvent, Job,
                    JobEvent, JobNotify, JobSample, JobSpec, JobStatus, JobUsage, LeaseRecord, Node, Policy,
                    PollCycle, Queue, Resources, Token)

MAX_PAGE = 1000
MAX_NAME = 200   # characters of a job name (the API's schema says the same)
FOREIGN_STATES = ("PENDING", "RUNNING")   # what a foreign job can be while its scheduler lists it
MODE_KEY = "mode"


# -- what the use cases return (plain values; metasched/web/views.py gives them their HTTP shape) ----------

@dataclass(frozen=True)
class QueueSummary:
    queue: Queue
    jobs: dict[str, int]              # our jobs per state (every state present)
    foreign: dict[str, int]           # jobs submitted to the scheduler directly, per FOREIGN_STATES
    script: str = "executable"        # what a job's script must be for it: executable | readable


@dataclass(frozen=True)
class JobDetail:
    """One job as GET /jobs/{id} shows it: with where its output goes (its backend's resolved paths; an array's:
    its tasks', with backends.base.TASK_SLOT where a task's index goes), for an array its tasks per state, and,
    when asked for (include=metrics, issue 15), its latest live measurement."""
    job: Job
    outputs: object                   # backends.base.OutputFiles
    metrics: "JobUsage | None" = None     # None: not asked for, or the agents never saw it run
    include_metrics: bool = False
    notify: JobNotify | None = None   # what its owner asked to be told (issue 17)
    tasks: dict[str, int] | None = None


@dataclass(frozen=True)
class JobHistory:
    """GET /jobs/{id}/events: every change, its id in the event log, and how each was delivered."""
    events: list[JobEvent]
    event_ids: dict[int, int]                 # job_events.id -> events.id
    deliveries: dict[int, list[Delivery]]     # events.id -> its deliveries


@dataclass(frozen=True)
class EventPage:
    """A page of the event log a caller may see; ``last_id``: the newest event id when it was read (a reader
    that got everything up to here resumes after it)."""
    items: list[FeedEvent]
    more: bool
    last_id: int


@dataclass(frozen=True)
class Mode:
    policy: str
    high_priority: Queue | None
    weights: dict[int, int]           # queue id -> weight in force
    queues: list[Queue]
    updated_at: str
    updated_by: str


@dataclass(frozen=True)
class Status:
    caller: Caller
    lease: LeaseRecord | None         # None: nobody holds it
    last_cycle: PollCycle | None


@dataclass(frozen=True)
class Page:
    """One page of a keyset listing and whether more follow (looked one item ahead, never guessed)."""
    items: list
    more: bool
    metrics: dict | None = None       # job id -> its latest JobUsage, when asked for (include=metrics)


@dataclass(frozen=True)
class Metrics:
    """Everything GET /metrics shows, read in one snapshot (counts only, no user names)."""
    queues: list[Queue]
    jobs: dict[int, dict[str, int]]           # queue id -> state -> jobs
    dispatches: dict[int, tuple[int, int]]    # queue id -> (dispatched, failed for good)
    nodes: list[Node]
    lease: LeaseRecord | None
    last_cycle: PollCycle | None
    cycles: dict                              # recorded cycles: n, sum_ms, max_ms
    queue_cpu: dict[int, float] | None = None    # queue id -> CPU seconds its jobs used, all nodes (counter)
    deliveries: dict = dataclasses.field(default_factory=dict)   # channel -> delivered, failed, attempt_failures, pending


@dataclass(frozen=True)
class History:
    """A history listing's window on the jobs' end (finished_at, UTC, as stored) and its keyset cursor."""
    since: str = ""
    until: str = "9999"
    before: tuple[str, int] = ("9999", 2 ** 63 - 1)    # (finished_at, id) of the last job of the previous page


@dataclass(frozen=True)
class JobMetrics:
    """A job's measurements over time (GET /jobs/{id}/metrics)."""
    job: Job
    latest: JobUsage | None
    samples: list[tuple[int, JobSample]]     # (cursor, sample), oldest first
    more: bool
    interval: float                          # seconds between its samples now (downsampled: x its stride)


@dataclass(frozen=True)
class NodeMetrics:
    node: Node
    samples: list[dict]                      # node_samples rows (id is the cursor), oldest first
    more: bool


@dataclass(frozen=True)
class UsageGroup:
    """What the jobs of one user (or one queue) that ended in the window used. A job whose scheduler (and the
    agents) reported no CPU time is not in cpu_hours: cpu_jobs says how many are; the same for wall time."""
    key: str
    name: str
    jobs: int
    completed: int
    failed: int                               # ERROR
    cancelled: int
    cpu_hours: float
    cpu_jobs: int
    wall_hours: float
    wall_jobs: int
    wait_p50_seconds: float | None            # submit (created_at) to start (started_at)
    wait_p95_seconds: float | None
    waited_jobs: int                          # jobs that started (the ones the wait is measured on)

    @property
    def failure_rate(self) -> float | None:
        """ERROR among the jobs that ran to an end of their own (COMPLETED or ERROR; cancels are not failures)."""
        done = self.completed + self.failed
        return self.failed / done if done else None


@dataclass(frozen=True)
class ShareUsage:
    """On one node, the CPU one scheduler's group got in the window, next to the share the policy targeted."""
    node: Node | None
    node_id: int
    queue: Queue | None
    queue_id: int
    seconds: float                            # how much of the window was measured
    cpu_seconds: float
    measured_share: float | None              # percent of the schedulers' CPU on that node
    target_share: float | None                # percent, averaged over the measured time


@dataclass(frozen=True)
class UsageReport:
    since: str
    until: str
    group_by: str                             # user | queue
    scope: str | None                         # the one user the report is about (None: everyone, admins)
    groups: list[UsageGroup]
    total: UsageGroup
    shares: list[ShareUsage]


@dataclass(frozen=True)
class NewToken:
    token: Token
    secret: str                       # shown once, stored only as a hash


class Shown(NamedTuple):
    """A job as shown: for an array, also its tasks per state (None for a plain job)."""
    job: Job
    tasks: dict[str, int] | None = None


@dataclass(frozen=True)
class Why:
    """Why a job (or one task of an array) is where it is: ``where`` metasched (waiting in our queue),
    dispatching, scheduler (in the scheduler's queue), running or ended; ``reasons`` what keeps it waiting now
    (policies.Reason: the policy's own, its dependencies, held, a throttle), ``scheduler_reason`` the
    scheduler's own pending reason (squeue %r, qstat -j scheduling info), ``position`` its place among the
    jobs waiting in its queue (1 = next) and ``ahead_yours`` which of those ahead are the caller's."""
    job: Job
    task: ArrayTask | None
    where: str
    reasons: list
    position: int | None = None
    ahead: int | None = None
    ahead_yours: list[int] = ()
    scheduler_reason: str | None = None
    since: str | None = None
    tasks: dict[str, int] | None = None


@dataclass(frozen=True)
class DryRun:
    """What a proposed mode would do now, changing nothing: the jobs it would dispatch at the next cycle, why
    the others would wait (reason -> jobs), the CPU shares on every node; and the same under the mode in
    force, for comparison."""
    mode: Mode
    dispatch: list[dict]
    waiting: dict[str, int]
    shares: dict[int, float]
    node_shares: dict[int, dict[int, float]]
    nodes: list[Node]
    current_dispatch: list[int]
    current_shares: dict[int, float]


@functools.lru_cache(maxsize=None)
def _name_checker(queue_type: str):
    """The backend's ``validate_name`` for a queue type, looked up once per process: a failed
    ``from .backends import get_backend`` searches the package directory on every call, and this runs
    inside submit's write transaction (it cost ~0.1 ms of lock hold time per submit)."""
    try:
        from .backends import get_backend
        backend = get_backend(queue_type)
    except Exception:   # backend registry not available: fall back to our own rules only
        return None
    return getattr(backend, "validate_name", None)


@functools.lru_cache(maxsize=None)
def _field_checker(queue_type: str):
    """The backend's ``field_problem`` (path, pwd, options the scheduler cannot take), looked up once."""
    try:
        from .backends import get_backend
        return getattr(get_backend(queue_type), "field_problem", None)
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def _array_checker(queue_type: str):
    """The backend's ``array_problem`` (None: the scheduler takes no arrays), looked up once."""
    try:
        from .backends import get_backend
        return getattr(get_backend(queue_type), "array_problem", None)
    except Exception:
        return None


def _backend_name_problem(queue_type: str, name: str) -> str | None:
    """Ask the queue's backend whether the scheduler would accept this job name."""
    check = _name_checker(queue_type)
    return check(name) if check else None


# -- what a job asks for (issue 14): the request's fields as a JobSpec, bounded and checked -----------------

ENV_MAX_VARS = 256
ENV_MAX_BYTES = 32 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_MEMORY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.I)
_HMS = re.compile(r"^(?:([0-9]+)-)?([0-9]+):([0-9]{1,2}):([0-9]{1,2})$")
_UNIT_TIME = re.compile(r"^([0-9]+)([smhd])$")
SPEC_KEYS = ("resources", "native", "env", "export", "stdout", "stderr", "join")


def parse_memory(value, field: str) -> int:
    """Bytes from an integer or a number with a unit (K, M, G, T: powers of 1024; "512M", "1.5G", "2GiB")."""
    if isinstance(value, int):
        return value
    m = _MEMORY.match(value)
    if not m:
        raise Invalid(f"{field}: expected bytes or a number with K, M, G or T, got {value!r}", field=field)
    n = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    if not 1 <= n <= 2 ** 50:
        raise Invalid(f"{field}: {value!r} is out of range (1 byte .. 1P)", field=field)
    return n


def parse_walltime(value, field: str) -> int:
    """Seconds from an integer, "[D-]HH:MM:SS", or a number with s, m, h or d."""
    if isinstance(value, int):
        return value
    m, u = _HMS.match(value), _UNIT_TIME.match(value)
    if m:
        d, h, mi, se = (int(x or 0) for x in m.groups())
        if mi > 59 or se > 59:
            raise Invalid(f"{field}: {value!r}: minutes and seconds go up to 59", field=field)
        n = ((d * 24 + h) * 60 + mi) * 60 + se
    elif u:
        n = int(u.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u.group(2)]
    else:
        raise Invalid(f"{field}: expected seconds, [D-]HH:MM:SS or a number with s, m, h or d, got {value!r}",
                      field=field)
    if not 1 <= n <= 366 * 86400:
        raise Invalid(f"{field}: {value!r} is out of range (1 s .. 366 days)", field=field)
    return n


def _resources(given: dict, base: Resources) -> Resources:
    """Resources from a request (a PATCH merges into base: null removes a field)."""
    values = base.asked()
    for key, v in given.items():
        if v is None:
            values.pop(key, None)
        elif key == "memory":
            values[key] = parse_memory(v, "resources.memory")
        elif key == "walltime":
            values[key] = parse_walltime(v, "resources.walltime")
        else:
            values[key] = v
    return Resources(**values)


def spec_from_request(body: dict, base: JobSpec = NO_SPEC, *, array: bool = False) -> JobSpec:
    """The JobSpec a request asks for (submit: from nothing; PATCH: the fields it gives replace the job's, and
    resources merge). Bounded, and refused by name: a 400 stores nothing. ``array``: the job is an array (its
    output patterns then need %a, the task's index; a plain job's may not have it)."""
    if not any(k in body for k in SPEC_KEYS):
        return base
    from .backends.base import pattern_problem
    fields = {}
    if "resources" in body:
        fields["resources"] = _resources(body["resources"], base.resources)
    if "native" in body:
        for i, arg in enumerate(body["native"]):
            if "\0" in arg:
                raise Invalid(f"native[{i}]: must not contain NUL characters", field=f"native[{i}]")
        fields["native"] = tuple(body["native"])
    if "env" in body:
        env = body["env"]
        if len(env) > ENV_MAX_VARS:
            raise Invalid(f"env: at most {ENV_MAX_VARS} variables, got {len(env)}", field="env")
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise Invalid(f"env.{name}: not a variable name (letters, digits, _; not a digit first)",
                              field=f"env.{name}")
            if "\0" in value:
                raise Invalid(f"env.{name}: must not contain NUL characters", field=f"env.{name}")
        size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
        if size > ENV_MAX_BYTES:
            raise Invalid(f"env: at most {ENV_MAX_BYTES // 1024} KiB of variables, got {size} bytes", field="env")
        fields["env"] = tuple(sorted(env.items()))
    if "export" in body:
        export = body["export"]
        fields["export"] = tuple(dict.fromkeys(export)) if isinstance(export, list) else export
    for key in ("stdout", "stderr"):
        if key in body:
            if body[key] is not None:
                problem = pattern_problem(body[key], array)
                if problem:
                    raise Invalid(f"{key}: {problem}", field=key)
            fields[key] = body[key]
    if "join" in body:
        fields["join"] = body["join"]
    spec = dataclasses.replace(base, **fields)
    if spec.join and spec.stderr is not None:
        field = "stderr" if "stderr" in body else "join"
        raise Invalid(f"{field}: give either stderr (a file of its own) or join (stderr into stdout)", field=field)
    return spec


class Services:
    def __init__(self, db: Database, config: Config, authority: Authority, clock=utcnow, remote=None):
        """remote: node -> a transport to it (``run(command, timeout=) -> Result``, ``user``): how GET
        /jobs/{id}/output reads a file on a scheduler's master node. Given by the composition root (runner.py),
        so that neither this layer nor the web layer imports the transport."""
        self.db = db
        self.repo = Repository(db)
        self.config = config
        self.authority = authority
        self.now = clock
        self.remote = remote
        self.on_new_work = None   # set by the poller host: called after a commit that adds work
        self._backends: dict[str, object] = {}
        self._backends_lock = threading.Lock()

    # -- startup ------------------------------------------------------------------------------
    def sync_config(self) -> None:
        """Record the configured nodes and schedulers; ids stay stable across restarts and reordering
        (nodes are keyed by address:port, queues by scheduler name)."""
        now = self.now()
        with self.db.write():
            node_ids = []
            for pos, n in enumerate(self.config.nodes):
                node = self.repo.get_node_by_address(n.ip, n.port)
                if node is None:
                    node = self.repo.insert_node(address=n.ip, port=n.port, transport=n.transport, position=pos)
                else:
                    self.repo.update_node_config(id=node.id, transport=n.transport, position=pos)
                node_ids.append(node.id)
            self.repo.unlist_nodes(node_ids)
            queue_ids = []
            for pos, s in enumerate(self.config.schedulers):
                queue = self.repo.get_queue_by_name(s.name)
                fields = dict(type=s.type, master_node_id=node_ids[s.master], weight=s.weight, position=pos)
                if queue is None:
                    queue = self.repo.insert_queue(name=s.name, now=now, **fields)
                else:
                    self.repo.update_queue_config(id=queue.id, **fields)
                queue_ids.append(queue.id)
            self.repo.unlist_queues(queue_ids)
            self._sync_mode(queue_ids, now)

    def _config_mode(self, queue_ids: list[int]) -> dict:
        hp = self.config.high_priority
        return {
            "policy": self.config.policy.value,
            "high_priority": queue_ids[hp] if hp is not None else None,
            "weights": {str(qid): s.weight for qid, s in zip(queue_ids, self.config.schedulers)},
        }

    def _sync_mode(self, queue_ids: list[int], now: str) -> None:
        """The mode set through the API survives restarts, unless the admin edited the config file's mode
        since (then the file wins, and that is recorded as an event too)."""
        from_config = self._config_mode(queue_ids)
        stored = self.repo.get_setting(MODE_KEY)
        if stored is not None and stored.value.get("config") == from_config:
            return
        mode = dict(from_config, config=from_config)
        self.repo.put_setting(key=MODE_KEY, value=mode, actor="config", now=now)
        self.repo.insert_cluster_event(kind="mode", actor="config", now=now,
                                       detail={"source": self.config.source, **from_config})

    # -- identity -----------------------------------------------------------------------------
    def token_caller(self, secret: str) -> Caller:
        now = self.now()
        with self.db.read():
            row = self.repo.find_token(secret_hash=hash_secret(secret), now=now)
        if row is None:
            raise Unauthenticated("invalid, expired or revoked token")
        stale = format_time(parse_time(now) - _dt.timedelta(minutes=1))
        if row.last_used_at is None or row.last_used_at < stale:
            # last_used_at is advisory: refresh it at most once a minute, so reads stay reads
            with self.db.write():
                self.repo.touch_token(id=row.id, now=now, stale=stale)
        return self.authority.caller(row.user, "token")

    @staticmethod
    def require(caller: Caller) -> None:
        if not caller.authenticated:
            raise Unauthenticated("no identity: connect over the unix socket or send Authorization: Bearer <token>")

    @staticmethod
    def require_admin(caller: Caller, what: str) -> None:
        Services.require(caller)
        if not caller.is_admin:
            raise Forbidden(f"only admins can {what}")

    # -- service ------------------------------------------------------------------------------
    def status(self, caller: Caller) -> Status:
        with self.db.read():
            lease = self.repo.get_lease()
            cycle = self.repo.last_poll_cycle()
        return Status(caller, lease if lease is not None and lease.holder else None, cycle)

    def metrics(self) -> Metrics:
        """Open to anyone who reaches /metrics: counts only."""
        with self.db.read():
            lease = self.repo.get_lease()
            return Metrics(queues=self.repo.list_queues(), jobs=self.repo.count_jobs_by_queue_status(),
                           dispatches=self.repo.metrics_dispatch_counts(), nodes=self.repo.list_nodes(),
                           lease=lease if lease is not None and lease.holder else None,
                           last_cycle=self.repo.last_poll_cycle(), cycles=self.repo.metrics_poll_cycle_stats(),
                           queue_cpu=self.repo.queue_cpu_totals(),
                           deliveries=self.repo.delivery_counts())

    # -- mode ---------------------------------------------------------------------------------
    def get_mode(self, caller: Caller) -> Mode:
        self.require(caller)
        with self.db.read():
            return self._mode(self.repo.get_setting(MODE_KEY), self.repo.list_queues())

    def current_mode(self) -> dict:
        """The stored mode, for the poller."""
        return self.repo.get_setting(MODE_KEY).value

    @staticmethod
    def _mode(setting, queues: list[Queue]) -> Mode:
        mode = setting.value
        weights = mode.get("weights", {})
        hp = mode.get("high_priority")
        return Mode(policy=mode["policy"], high_priority=next((q for q in queues if q.id == hp), None),
                    weights={q.id: weights.get(str(q.id), q.weight) for q in queues}, queues=queues,
                    updated_at=setting.updated_at, updated_by=setting.updated_by)

    def _proposed_mode(self, body: dict, mode: dict, queues: list[Queue]) -> dict:
        """The mode ``body`` asks for, on top of the stored one (validated: a 400 names the field)."""
        new = dict(mode)
        if "policy" in body:
            new["policy"] = Policy(body["policy"]).value
        if "high_priority" in body:
            new["high_priority"] = (None if body["high_priority"] is None
                                    else self._resolve_queue(body["high_priority"], queues, "high_priority").id)
        if "weights" in body:
            weights = dict(new.get("weights", {}))
            for key, w in body["weights"].items():
                q = self._resolve_queue(key, queues, f"weights.{key}")
                weights[str(q.id)] = w
            new["weights"] = weights
        if new["policy"] == Policy.BEST_EFFORT.value and new.get("high_priority") is None:
            raise Invalid("high_priority: required for best_effort (a queue id or name)", field="high_priority")
        return new

    def dry_run_mode(self, caller: Caller, body: dict) -> DryRun:
        """What ``PUT /cluster/mode`` with this body would do now, changing nothing (admins: the answer names
        everyone's jobs)."""
        self.require_admin(caller, "change the cluster mode (even as a dry run)")
        with self.db.read():
            setting = self.repo.get_setting(MODE_KEY)
            queues = self.repo.list_queues()
            proposed = self._proposed_mode(body, setting.value, queues)
            state = self._decision_inputs()
            nodes = self.repo.list_nodes()
        decision = self._decide(proposed, state, nodes)
        current = self._decide(setting.value, state, nodes)
        pending = {p["id"]: p for p in state["pending"]}
        waiting: dict[str, int] = {}
        for text in decision.waiting.values():
            waiting[text] = waiting.get(text, 0) + 1
        stored = dataclasses.replace(setting, value=proposed)
        return DryRun(mode=self._mode(stored, queues),
                      dispatch=[{k: pending[i][k] for k in ("id", "queue_id", "owner", "name")}
                                for i in decision.dispatch],
                      waiting=waiting, shares=decision.shares, node_shares=decision.node_shares, nodes=nodes,
                      current_dispatch=list(current.dispatch), current_shares=current.shares)

    def _decision_inputs(self) -> dict:
        """What a decision needs from the database (call inside a read transaction): queues, job counts, foreign
        jobs, the jobs waiting in our queue and what their dependencies name."""
        pending = self.repo.list_pending_jobs()
        ids, pairs = dependencies.targets_needed(p["depends_on"] for p in pending if p["depends_on"])
        targets = dependencies.targets_from(self.repo.dependency_targets(ids) if ids else {},
                                            self.repo.dependency_task_targets(pairs) if pairs else {})
        return {"queues": self.repo.list_queues(), "counts": self.repo.count_jobs_by_queue_status(),
                "foreign": self.repo.count_foreign_jobs_by_queue_state(), "pending": pending, "targets": targets}

    def _blocked(self, pending: list[dict], targets) -> dict[int, policies.Reason]:
        """Jobs waiting for something besides the policy: dependencies not met, a dispatch the poller backs off
        from (its note says so: the poller keeps the retry time, the database the note)."""
        out = {}
        for p in pending:
            if p["depends_on"]:
                r = dependencies.reason_of(dependencies.evaluate(p["depends_on"], targets),
                                           self.config.workflows.cancel_impossible)
                if r is not None:
                    out[p["id"]] = r
                    continue
            if (p["reason"] or "").startswith("waiting: dispatch attempt"):
                out[p["id"]] = policies.Reason("backoff", p["reason"], p["reason"])
        return out

    def _decide(self, mode: dict, state: dict, nodes: list[Node]) -> policies.Decision:
        """The policy's decision under ``mode`` on what the database knows (the poller's last observations):
        the same builder and the same pure policy as the poller's."""
        counts = state["counts"]
        active = {qid: (sum(n.get(s.value, 0) for s in ACTIVE_STATES), n.get("RUNNING", 0))
                  for qid, n in counts.items()}
        snap = policies.snapshot_of(
            mode=mode, queues=state["queues"], active=active,
            foreign={qid: sum(n.values()) for qid, n in state["foreign"].items()},
            reachable={q.id: q.reachable is not False for q in state["queues"]},   # not checked yet: reachable
            pending=[(p["id"], p["queue_id"]) for p in state["pending"]],
            blocked=self._blocked(state["pending"], state["targets"]),
            usage={q.id: q.usage for q in state["queues"]}, node_ids=[n.id for n in nodes],
            max_dispatch=self.config.poller.max_dispatch_per_cycle)
        return policies.decide(snap, parse_time(self.now()).timestamp())

    def set_mode(self, caller: Caller, body: dict) -> Mode:
        self.require_admin(caller, "change the cluster mode")
        now = self.now()
        with self.db.write():
            mode = self.repo.get_setting(MODE_KEY).value
            queues = self.repo.list_queues()
            new = self._proposed_mode(body, mode, queues)
            changed = {k: new[k] for k in ("policy", "high_priority", "weights") if new.get(k) != mode.get(k)}
            if changed:
                self.repo.put_setting(key=MODE_KEY, value=new, actor=caller.user, now=now)
                self.repo.insert_cluster_event(kind="mode", actor=caller.user, now=now,
                                               detail={"changed": changed, "previous": {
                                                   k: mode.get(k) for k in changed}})
            stored = self.repo.get_setting(MODE_KEY)
        self._notify()
        return self._mode(stored, queues)

    def mode_history(self, caller: Caller, limit: int = 20) -> list[ClusterEvent]:
        self.require(caller)
        with self.db.read():
            return self.repo.list_cluster_events("mode", limit)

    @staticmethod
    def _resolve_queue(ref, queues, field: str):
        for q in queues:
            if (isinstance(ref, int) and not isinstance(ref, bool) and q.id == ref) or \
               (isinstance(ref, str) and (q.name.lower() == ref.lower() or (ref.isdigit() and q.id == int(ref)))):
                return q
        raise Invalid(f"{field}: no queue {ref!r} (known: {', '.join(f'{q.id}={q.name}' for q in queues)})",
                      field=field)

    # -- nodes --------------------------------------------------------------------------------
    def list_nodes(self, caller: Caller) -> list[Node]:
        self.require(caller)
        with self.db.read():
            return self.repo.list_nodes()

    def get_node(self, caller: Caller, node_id: int) -> Node:
        self.require(caller)
        with self.db.read():
            node = self.repo.get_node(node_id)
        if node is None:
            raise NotFound("node", node_id)
        return node

    def get_master_node(self, caller: Caller) -> Node:
        self.require(caller)
        with self.db.read():
            return self.repo.list_nodes()[0]

    # -- queues -------------------------------------------------------------------------------
    def list_queues(self, caller: Caller) -> list[QueueSummary]:
        self.require(caller)
        with self.db.read():
            queues = self.repo.list_queues()
            counts = self.repo.count_jobs_by_queue_status()
            foreign = self.repo.count_foreign_jobs_by_queue_state()
        return [self._summary(q, counts, foreign) for q in queues]

    def get_queue(self, caller: Caller, queue_id: int) -> QueueSummary:
        self.require(caller)
        with self.db.read():
            q = self.repo.get_queue(queue_id)
            counts = self.repo.count_jobs_by_queue_status()
            foreign = self.repo.count_foreign_jobs_by_queue_state()
        if q is None or q.position is None:
            raise NotFound("queue", queue_id)
        return self._summary(q, counts, foreign)

    def _summary(self, q: Queue, counts: dict, foreign: dict) -> QueueSummary:
        mine, theirs = counts.get(q.id, {}), foreign.get(q.id, {})
        return QueueSummary(q, {s.value: mine.get(s.value, 0) for s in JobStatus},
                            {s: theirs.get(s, 0) for s in FOREIGN_STATES}, self.backend(q).script_needs())

    # -- foreign jobs -------------------------------------------------------------------------
    def list_foreign_jobs(self, caller: Caller, *, queue=None, owner=None, after: int = 0,
                          limit: int = 100) -> Page:
        """Jobs submitted directly to the schedulers. The same visibility as our jobs: a user sees only
        their own, admins everyone's."""
        owner, limit = self._listing_scope(caller, owner, limit)
        with self.db.read():
            rows = self.repo.list_foreign_jobs(after=after, limit=limit + 1, owner=owner,
                                               queue_id=self._queue_filter(queue))
        return Page(rows[:limit], len(rows) > limit)

    def _listing_scope(self, caller: Caller, owner: str | None, limit: int) -> tuple[str | None, int]:
        """Whose jobs a listing may show (a user: their own; admins: anyone's) and the page size."""
        self.require(caller)
        if owner is not None and owner != caller.user and not caller.is_admin:
            raise Forbidden("only admins can list other users' jobs")
        return (owner if caller.is_admin else caller.user), max(1, min(limit, MAX_PAGE))

    def _queue_filter(self, queue) -> int | None:
        if queue is None:
            return None
        return self._resolve_queue(queue, self.repo.list_queues(), "queue").id

    # -- jobs ---------------------------------------------------------------------------------
    def submit_job(self, caller: Caller, body: dict) -> Shown:
        self.require(caller)
        owner = body.get("owner") or caller.user
        if owner != caller.user and not caller.is_admin:
            raise Forbidden("only admins can submit jobs for another user")
        self.authority.check_owner(owner)
        path = self._check_script(body["path"])
        pwd = self._check_path(body.get("pwd") or posixpath.dirname(path) or "/", "pwd")
        name = body.get("name") or posixpath.basename(path)[:MAX_NAME]   # a default must fit the limit too
        options = self._check_options(body.get("options", []))
        array = self._check_array(body.get("array"))
        spec = spec_from_request(body, array=array is not None)
        notify = EV.parse_notify(body["notify"], self.config) if body.get("notify") is not None else None
        now = self.now()
        with self.db.write():
            queues = self.repo.list_queues()
            queue = self._resolve_queue(body["queue"], queues, "queue")
            self._check_name(queue, name)
            self._check_fields(queue, path, pwd, body.get("options", []), array)
            self._check_spec(queue, Job(id=0, name=name, queue_id=queue.id, owner=owner, status=JobStatus.HELD,
                                        path=path, options=tuple(options), pwd=pwd, spec=spec,
                                        array_spec=str(array) if array else None))
            depends_on = self._check_after(caller, owner, body.get("after"))
            status = JobStatus.HELD if body.get("hold") else JobStatus.TO_BE_QUEUED
            job = lifecycle.create(self.repo, name=name, queue_id=queue.id, owner=owner, status=status, path=path,
                                   options=options, pwd=pwd, actor=caller.user, now=now, spec=spec, array=array,
                                   depends_on=depends_on,
                                   reason="submitted held" if status is JobStatus.HELD else "submitted")
            if notify is not None:
                self.repo.insert_job_notify(dataclasses.replace(notify, job_id=job.id))
            shown = self._shown([job])[0]
        self._notify()
        return shown

    def _check_array(self, text) -> ArraySpec | None:
        if text is None:
            return None
        try:
            spec = ArraySpec.parse(text)
        except ValueError as exc:
            raise Invalid(f"array: {exc}", field="array") from None
        limit = self.config.workflows.max_array_tasks
        if spec.count > limit:
            raise Invalid(f"array: {spec.count} tasks; an array may have at most {limit} (workflows.max_array_tasks)",
                          field="array")
        return spec

    def _check_after(self, caller: Caller, owner: str, after: dict | None, job: Job | None = None) \
            -> tuple[Dependency, ...]:
        """The dependencies ``after`` names, each checked: the job (and task) exists and is the caller's (an
        admin may name anyone's; another user's job is "no job N", as an unknown one), it can still be met,
        and (for an edit) it closes no cycle. A 400 names the field, e.g. ``after.ok[1]``."""
        deps: list[Dependency] = []
        for kind in DEPENDENCY_KINDS:
            for i, ref in enumerate((after or {}).get(kind) or ()):
                where = f"after.{kind}[{i}]"
                dep = self._parse_dependency(kind, ref, where)
                target = self.repo.get_job(dep.job_id)
                if target is None or (target.owner != caller.user and not caller.is_admin):
                    raise Invalid(f"{where}: no job {dep.job_id}", field=where)
                if job is not None and dep.job_id == job.id:
                    raise Invalid(f"{where}: job {job.id} cannot wait for itself", field=where)
                state = {"status": target.status.value, "started_at": target.started_at, "failed_tasks": 0}
                tasks = {}
                if dep.task is not None:
                    if not target.array_spec or dep.task not in ArraySpec.parse(target.array_spec, internal=True):
                        raise Invalid(f"{where}: job {dep.job_id} has no task {dep.task}", field=where)
                    t = self.repo.get_array_task(dep.job_id, dep.task)
                    tasks[(dep.job_id, dep.task)] = {"status": t.status.value, "started_at": t.started_at}
                elif target.array_spec:
                    state = self.repo.dependency_targets([dep.job_id])[dep.job_id]
                verdict, why = dependencies.check(dep, dependencies.targets_from({dep.job_id: state}, tasks)
                                                  .get((dep.job_id, dep.task)))
                if verdict == dependencies.NEVER:
                    raise Invalid(f"{where}: {why}: this dependency can never be met", field=where)
                if dep not in deps:
                    deps.append(dep)
        if job is not None and deps:
            cycle = dependencies.find_cycle(job.id, deps, self._depends_of)
            if cycle:
                raise Invalid(f"after: would make a cycle: {' -> '.join(map(str, cycle))}", field="after")
        return tuple(deps)

    def _depends_of(self, job_id: int) -> tuple[Dependency, ...]:
        other = self.repo.get_job(job_id)
        return other.depends_on if other is not None else ()

    @staticmethod
    def _parse_dependency(kind: str, ref, where: str) -> Dependency:
        """12 or "12" (a job; an array: all its tasks) or "12.3" (task 3 of array 12)."""
        text = str(ref) if isinstance(ref, int) and not isinstance(ref, bool) else ref
        m = re.fullmatch(r"([1-9][0-9]{0,17})(?:\.([0-9]{1,9}))?", text) if isinstance(text, str) else None
        if m is None:
            raise Invalid(f"{where}: expected a job id (12) or a task (12.3), got {ref!r}", field=where)
        return Dependency(kind, int(m.group(1)), int(m.group(2)) if m.group(2) is not None else None)

    def _shown(self, jobs: list[Job]) -> list[Shown]:
        """Jobs with their tasks per state (arrays), one query for all of them (inside a transaction)."""
        arrays = [j.id for j in jobs if j.array_spec]
        counts = self.repo.count_array_tasks(arrays) if arrays else {}
        return [Shown(j, {s.value: counts.get(j.id, {}).get(s.value, 0) for s in JobStatus
                          if s is not JobStatus.DISPATCHING} if j.array_spec else None) for j in jobs]

    @staticmethod
    def _check_path(p: str, field: str) -> str:
        if not p.startswith("/"):
            raise Invalid(f"{field}: must be an absolute path, got {p!r}", field=field)
        if "\0" in p or "\n" in p:
            raise Invalid(f"{field}: must not contain NUL or newline characters", field=field)
        return posixpath.normpath(p)

    @classmethod
    def _check_script(cls, p: str) -> str:
        path = cls._check_path(p, "path")
        if path == "/":
            raise Invalid("path: must name the job's script or jar, got '/'", field="path")
        return path

    @staticmethod
    def _check_options(options) -> list[str]:
        """Arguments become argv elements of the native submit: a NUL cannot be passed in one."""
        for i, arg in enumerate(options):
            if "\0" in arg:
                raise Invalid(f"options[{i}]: must not contain NUL characters", field=f"options[{i}]")
        return list(options)

    @staticmethod
    def _check_name(queue, name: str) -> None:
        if "\n" in name or "\r" in name or "\0" in name:
            raise Invalid("name: must not contain newlines or NUL", field="name")
        problem = _backend_name_problem(queue.type, name)
        if problem:
            raise Invalid(f"name: {queue.name} would refuse {name!r}: {problem}", field="name")

    @staticmethod
    def _check_fields(queue, path: str, pwd: str, options: list[str], array: ArraySpec | None = None) -> None:
        check = _field_checker(queue.type)
        problem = check(path, pwd, list(options)) if check else None
        if problem is None and array is not None:
            check = _array_checker(queue.type)
            problem = check(pwd) if check else ("array", f"{queue.type} queues take no arrays")
        if problem:
            field, reason = problem
            value = {"path": path, "pwd": pwd, "options": options, "array": str(array)}.get(field)
            raise Invalid(f"{field}: {queue.name} cannot take {value!r}: {reason}", field=field)

    def backend(self, queue: Queue):
        """The queue's backend with its configured options (made once per process: pure, no I/O)."""
        key = queue.name.lower()
        b = self._backends.get(key)
        if b is None:
            from .backends import get_backend
            opts = next((sc.options for sc in self.config.schedulers if sc.name.lower() == key), {})
            with self._backends_lock:
                b = self._backends.setdefault(key, get_backend(queue.type, opts))
        return b

    def _check_spec(self, queue: Queue, job: Job) -> None:
        """What the job asks for, against what its scheduler can honour: a 400 naming the field and the queue."""
        if job.spec is NO_SPEC:
            return
        problem = self.backend(queue).spec_problem(job)
        if problem:
            field, reason = problem
            raise Invalid(f"{reason} (queue {queue.name})", field=field)

    def job_detail(self, caller: Caller, job_id: int, *, include_metrics: bool = False) -> JobDetail:
        """One job, and where its output goes (GET /jobs/{id}); an array with its tasks per state; with
        ``include_metrics``, its latest live measurement."""
        self.require(caller)
        with self.db.read():
            job = self._visible_job(caller, job_id)
            queue = self.repo.get_queue(job.queue_id)
            usage = self.repo.get_job_usage(job_id) if include_metrics else None
            notify = self.repo.get_job_notify(job_id)
            shown = self._shown([job])[0]
        return JobDetail(job, self.backend(queue).output_files(job), usage, include_metrics, notify, shown.tasks)

    def read_output(self, caller: Caller, job_id: int, stream: str, offset: int, length: int,
                    task: int | None = None):
        """Bytes of a job's stdout or stderr (an array's: one task's, ``task``), read as its owner on its
        scheduler's master node (through the injected transport, with a sudo -n -u <owner> and the server's
        output_timeout): NoOutput (404) before the file exists, Unavailable (503) when the node does not answer in
        time. Never as root."""
        from .backends.base import OutputRefused, command_line, parse_read_output, read_output_argv
        self.require(caller)
        with self.db.read():
            job = self._visible_job(caller, job_id)
            if job.array_spec and task is None:
                raise Invalid(f"task: job {job.id} is an array: each task has its own output; give ?task=N",
                              field="task")
            if task is not None:
                self._visible_task(job, task)
            queue = self.repo.get_queue(job.queue_id)
            node = self.repo.get_node(queue.master_node_id)
        files = self.backend(queue).output_files(job, task) if job.array_spec else self.backend(queue).output_files(job)
        if stream == "stderr" and files.joined:
            raise NoOutput(f"job {job.id}'s stderr is joined into its stdout: read stream=stdout", job_id=job.id)
        path = files.stdout if stream == "stdout" else files.stderr
        if path is None:
            raise NoOutput(f"job {job.id} has no {stream} yet: it is {job.status.value}", job_id=job.id)
        if job.owner == "root":
            raise Forbidden("jobs never run as root")
        if self.remote is None:
            raise Unavailable("this server reads no job outputs (no transport to the nodes was given)")
        transport = self.remote(node)
        user = getattr(transport, "user", None) or self.authority.service_user
        argv = read_output_argv(path, offset, min(length, self.config.server.output_max_bytes),
                                None if job.owner == user else job.owner)
        res = transport.run(command_line(argv), timeout=self.config.server.output_timeout)
        if res.error is not None:
            raise Unavailable(f"cannot read job {job.id}'s {stream} on {node.address}:{node.port}: {res.error}")
        try:
            chunk = parse_read_output(path, res.rc, res.stdout, res.stderr)
        except OutputRefused as exc:
            raise NoOutput(f"job {job.id}'s {stream} {exc}", job_id=job.id) from None
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from None
        if chunk is None:
            raise NoOutput(f"job {job.id}'s {stream} {path} does not exist (yet)", job_id=job.id)
        return chunk

    def _visible_job(self, caller: Caller, job_id: int) -> Job:
        job = self.repo.get_job(job_id)
        if job is None or (job.owner != caller.user and not caller.is_admin):
            raise NotFound("job", job_id)
        return job

    def get_job(self, caller: Caller, job_id: int) -> Shown:
        self.require(caller)
        with self.db.read():
            return self._shown([self._visible_job(caller, job_id)])[0]

    def list_jobs(self, caller: Caller, *, statuses=None, queue=None, owner=None, after: int = 0,
                  limit: int = 100, newest: bool = False, before: int | None = None, history: History | None = None,
                  include_metrics: bool = False) -> Page:
        """One page of jobs (Shown: an array is one item, with its tasks per state), oldest first (after a
        cursor) or newest first (before one), and whether more follow. With ``history`` (an end-time window):
        the jobs that ended in it, newest end first (issue 15)."""
        owner, limit = self._listing_scope(caller, owner, limit)
        with self.db.read():
            queue_id = self._queue_filter(queue)
            if history is not None:
                jobs = self.repo.list_job_history(since=history.since, until=history.until, before=history.before,
                                                  limit=limit + 1, owner=owner, queue_id=queue_id, statuses=statuses)
            elif newest:
                jobs = self.repo.list_jobs_newest(before=before, limit=limit + 1, owner=owner, queue_id=queue_id,
                                                  statuses=statuses)
            else:
                jobs = self.repo.list_jobs(after=after, limit=limit + 1, owner=owner, queue_id=queue_id,
                                           statuses=statuses)
            metrics = self.repo.list_job_usage([j.id for j in jobs[:limit]]) if include_metrics else None
            return Page(self._shown(jobs[:limit]), len(jobs) > limit, metrics)

    def job_events(self, caller: Caller, job_id: int, task: int | None = None) -> list[JobEvent]:
        """The job's own events; with ``task``, that task's (an array's tasks have their own histories)."""
        self.require(caller)
        with self.db.read():
            job = self._visible_job(caller, job_id)
            if task is not None:
                self._visible_task(job, task)
            return self.repo.list_job_events(job_id, task)

    def job_history(self, caller: Caller, job_id: int, task: int | None = None) -> JobHistory:
        """A job's events with their ids in the event log and the state of their deliveries; with ``task``, that
        task's own events (an array's tasks have their own histories)."""
        self.require(caller)
        with self.db.read():
            job = self._visible_job(caller, job_id)
            if task is not None:
                self._visible_task(job, task)
            events = self.repo.list_job_events(job_id, task)
            ids = self.repo.job_event_ids(job_id) if task is None else {}
            deliveries: dict[int, list[Delivery]] = {}
            for d in self.repo.list_job_deliveries(job_id):
                deliveries.setdefault(d.event_id, []).append(d)
        return JobHistory(events, ids, deliveries)

    # -- the event log (GET /events, the stream) ------------------------------------------------------
    def list_events(self, caller: Caller, *, after: int = 0, limit: int = 100) -> EventPage:
        """The events after a cursor that the caller may see: their own jobs' (admins: everyone's) and the
        cluster's, oldest first."""
        self.require(caller)
        limit = max(1, min(limit, MAX_PAGE))
        with self.db.read():
            rows = self.repo.event_feed(after=after, limit=limit + 1, owner=None if caller.is_admin else caller.user)
            last = self.repo.latest_event_id()
        more = len(rows) > limit
        return EventPage(rows[:limit], more, rows[limit - 1].id if more else last)

    def event_feed(self, after: int, limit: int) -> EventPage:
        """Every event after a cursor, for the stream's hub (which filters per reader: events.may_see)."""
        with self.db.read():
            rows = self.repo.event_feed(after=after, limit=limit + 1)
            last = self.repo.latest_event_id()
        more = len(rows) > limit
        return EventPage(rows[:limit], more, rows[limit - 1].id if more else last)

    def latest_event_id(self) -> int:
        with self.db.read():
            return self.repo.latest_event_id()

    def edit_job(self, caller: Caller, job_id: int, body: dict) -> Shown:
        self.require(caller)
        now = self.now()
        with self.db.write():
            job = self._visible_job(caller, job_id)
            if job.status not in UNDISPATCHED_STATES:
                raise JobStateConflict(job.id, job.status.value, "edit after dispatch")
            queues = self.repo.list_queues()
            queue_id = self._resolve_queue(body["queue"], queues, "queue").id if "queue" in body else job.queue_id
            queue = next(q for q in queues if q.id == queue_id) if any(q.id == queue_id for q in queues) else None
            name = body.get("name", job.name)
            if queue is not None:
                self._check_name(queue, name)
            path = self._check_script(body["path"]) if "path" in body else job.path
            options = self._check_options(body["options"]) if "options" in body else job.options
            pwd = self._check_path(body["pwd"], "pwd") if "pwd" in body else job.pwd
            spec = spec_from_request(body, job.spec, array=bool(job.array_spec))
            array = ArraySpec.parse(job.array_spec, internal=True) if job.array_spec else None
            if queue is not None:
                self._check_fields(queue, path, pwd, body.get("options", job.options), array)
                self._check_spec(queue, dataclasses.replace(job, name=name, queue_id=queue_id, path=path,
                                                            options=tuple(options), pwd=pwd, spec=spec))
            depends_on = self._check_after(caller, job.owner, body["after"], job) if "after" in body else None
            updated = lifecycle.edit(self.repo, job, actor=caller.user, now=now, changed=sorted(body), name=name,
                                     queue_id=queue_id, path=path, options=options, pwd=pwd, spec=spec,
                                     depends_on=depends_on)
            if updated is None:  # cannot happen inside BEGIN IMMEDIATE: the read and the write are one
                raise Conflict(f"job {job.id} changed concurrently; retry")
            shown = self._shown([updated])[0]
        self._notify()
        return shown

    def _transition(self, job: Job, new: JobStatus, actor: str, reason: str, now: str) -> Job:
        if not can_transition(job.status, new):
            raise JobStateConflict(job.id, job.status.value, f"move to {new.value}")
        updated = lifecycle.transition(self.repo, job, new, actor=actor, reason=reason, now=now)
        if updated is None:  # changed under us between read and write: impossible inside BEGIN IMMEDIATE
            raise Conflict(f"job {job.id} changed concurrently; retry")
        return updated

    def hold_job(self, caller: Caller, job_id: int) -> Shown:
        """Before dispatch: the job (or array) is held in our queue. An array in its scheduler's queue: every
        task still waiting there is held (the poller holds them in the scheduler)."""
        return self._hold_or_release(caller, job_id, hold=True)

    def release_job(self, caller: Caller, job_id: int) -> Shown:
        return self._hold_or_release(caller, job_id, hold=False)

    def _hold_or_release(self, caller: Caller, job_id: int, *, hold: bool) -> Shown:
        waiting, held, queued = JobStatus.TO_BE_QUEUED, JobStatus.HELD, JobStatus.QUEUED
        old, new, tasks_from, tasks_to, verb, only = (
            (waiting, held, queued, held, "held", "hold (only jobs not yet dispatched)") if hold else
            (held, waiting, held, queued, "released", "release (only held jobs)"))
        self.require(caller)
        now = self.now()
        with self.db.write():
            job = self._visible_job(caller, job_id)
            if job.array_spec and job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                lifecycle.move_tasks(self.repo, job, [tasks_from], tasks_to, actor=caller.user,
                                     reason=f"{verb} by {caller.user}", now=now)
            elif job.status is not new:
                if job.status is not old:
                    raise JobStateConflict(job.id, job.status.value, only)
                job = self._transition(job, new, caller.user, f"{verb} by {caller.user}", now)
            shown = self._shown([job])[0]
        self._notify()
        return shown

    def cancel_job(self, caller: Caller, job_id: int) -> Shown:
        """Before dispatch: cancelled at once (an array with all its tasks). After: a cancel request the poller
        carries out (an array: all its tasks, in one native cancel)."""
        self.require(caller)
        now = self.now()
        with self.db.write():
            job = self._visible_job(caller, job_id)
            if job.status in FINAL_STATES:
                raise JobStateConflict(job.id, job.status.value, "cancel a finished job")
            if job.status in UNDISPATCHED_STATES:
                job = self._transition(job, JobStatus.CANCELLED, caller.user, f"cancelled by {caller.user}", now)
            elif not job.cancel_requested:
                job = lifecycle.request_cancel(self.repo, job, actor=caller.user, now=now)
                if job is None:  # cannot happen inside BEGIN IMMEDIATE
                    raise Conflict(f"job {job_id} changed concurrently; retry")
            shown = self._shown([job])[0]
        self._notify()
        return shown

    # -- array tasks ------------------------------------------------------------------------------
    def _visible_task(self, job: Job, task: int) -> ArrayTask:
        t = self.repo.get_array_task(job.id, task) if job.array_spec else None
        if t is None:
            raise NotFound("task", f"{job.id}.{task}")
        return t

    def list_tasks(self, caller: Caller, job_id: int, *, statuses=None, after: int = 0, limit: int = 100) -> Page:
        """One page of an array's tasks, by index."""
        self.require(caller)
        limit = max(1, min(limit, MAX_PAGE))
        with self.db.read():
            job = self._visible_job(caller, job_id)
            if not job.array_spec:
                raise NotFound("array", job_id)
            tasks = self.repo.list_array_tasks(job_id=job_id, after=after, limit=limit + 1, statuses=statuses)
        return Page(tasks[:limit], len(tasks) > limit)

    def get_task(self, caller: Caller, job_id: int, task: int) -> ArrayTask:
        self.require(caller)
        with self.db.read():
            return self._visible_task(self._visible_job(caller, job_id), task)

    def _task_transition(self, task: ArrayTask, new: JobStatus, actor: str, reason: str, now: str,
                         cancel: bool = False) -> ArrayTask:
        updated = lifecycle.task_transition(self.repo, task, new, actor=actor, reason=reason, now=now, cancel=cancel)
        if updated is None:  # cannot happen inside BEGIN IMMEDIATE
            raise Conflict(f"task {task.ref} changed concurrently; retry")
        return updated

    def hold_task(self, caller: Caller, job_id: int, task: int) -> ArrayTask:
        """A task not started yet is kept from starting: in our queue before its array is dispatched, in the
        scheduler's queue after (the poller holds it there)."""
        self.require(caller)
        now = self.now()
        with self.db.write():
            job = self._visible_job(caller, job_id)
            t = self._visible_task(job, task)
            if t.status is not JobStatus.HELD:
                if t.status not in (JobStatus.TO_BE_QUEUED, JobStatus.QUEUED):
                    raise JobStateConflict(job.id, f"{t.status.value} (task {t.ref})", "hold (only tasks not started)")
                t = self._task_transition(t, JobStatus.HELD, caller.user, f"held by {caller.user}", now)
                if job.status in UNDISPATCHED_STATES:
                    lifecycle.submit_held(self.repo, job, actor=caller.user, now=now)
        self._notify()
        return t

    def release_task(self, caller: Caller, job_id: int, task: int) -> ArrayTask:
        self.require(caller)
        now = self.now()
        with self.db.write():
            job = self._visible_job(caller, job_id)
            t = self._visible_task(job, task)
            if t.status is JobStatus.HELD:
                new = JobStatus.QUEUED if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) else JobStatus.TO_BE_QUEUED
                t = self._task_transition(t, new, caller.user, f"released by {caller.user}", now)
            elif t.status not in (JobStatus.TO_BE_QUEUED, JobStatus.QUEUED):
                raise JobStateConflict(job.id, f"{t.status.value} (task {t.ref})", "release (only held tasks)")
        self._notify()
        return t

    def cancel_task(self, caller: Caller, job_id: int, task: int) -> ArrayTask:
        """A task not in its scheduler yet is cancelled at once (and, should the scheduler list it later, there
        too); one in its scheduler's queue or running is a request the poller carries out. An array whose
        tasks were all cancelled before it was dispatched is cancelled itself."""
        self.require(caller)
        now = self.now()
        with self.db.write():
            job = self._visible_job(caller, job_id)
            t = self._visible_task(job, task)
            if t.status.final:
                raise JobStateConflict(job.id, f"{t.status.value} (task {t.ref})", "cancel a finished task")
            if t.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                if not t.cancel_requested:
                    t = lifecycle.request_task_cancel(self.repo, t, actor=caller.user, now=now)
            else:
                t = self._task_transition(t, JobStatus.CANCELLED, caller.user, f"cancelled by {caller.user}", now,
                                          cancel=True)
                counts = self.repo.count_array_tasks([job.id]).get(job.id, {})
                if job.status in UNDISPATCHED_STATES and all(JobStatus(s).final for s in counts):
                    self._transition(job, JobStatus.CANCELLED, caller.user,
                                     f"cancelled by {caller.user} (all its tasks)", now)
                elif job.status in UNDISPATCHED_STATES:
                    lifecycle.submit_held(self.repo, job, actor=caller.user, now=now)
        self._notify()
        return t

    # -- why is it waiting ------------------------------------------------------------------------
    def why(self, caller: Caller, job_id: int, task: int | None = None) -> Why:
        """Why a job (or one task of an array) is waiting, now: in our queue, the policy's own reason (computed
        from what the database knows, by the same pure policy the poller runs), its dependencies, a hold, its
        place in its queue; in the scheduler's queue, the scheduler's own pending reason as the poller last
        read it. Another user's job is not found."""
        self.require(caller)
        with self.db.read():
            job = self._visible_job(caller, job_id)
            t = self._visible_task(job, task) if task is not None else None
            shown = self._shown([job])[0]
            state = self._decision_inputs() if job.status is JobStatus.TO_BE_QUEUED else None
            nodes = self.repo.list_nodes()
            ahead = self.repo.list_queue_ahead(queue_id=job.queue_id, id=job.id) \
                if job.status is JobStatus.TO_BE_QUEUED else None
            since = self._reason_since(job)
            held_by = self._last_actor(job, JobStatus.HELD) if job.status is JobStatus.HELD else None
        reasons: list[policies.Reason] = []
        where = {JobStatus.TO_BE_QUEUED: "metasched", JobStatus.HELD: "metasched",
                 JobStatus.DISPATCHING: "dispatching", JobStatus.QUEUED: "scheduler",
                 JobStatus.RUNNING: "running"}.get(job.status, "ended")
        if job.status is JobStatus.HELD:
            reasons.append(policies.Reason("held", "held", f"held{held_by}: release it to let it be dispatched"))
        if job.status in UNDISPATCHED_STATES and job.depends_on:
            with self.db.read():
                ids, pairs = dependencies.targets_needed([job.depends_on])
                targets = dependencies.targets_from(self.repo.dependency_targets(ids),
                                                    self.repo.dependency_task_targets(pairs) if pairs else {})
            r = dependencies.reason_of(dependencies.evaluate(job.depends_on, targets),
                                       self.config.workflows.cancel_impossible)
            if r is not None:
                reasons.append(r)
        position = n_ahead = None
        yours: list[int] = []
        if state is not None:
            decision = self._decide(self.repo_mode(), state, nodes)
            r = decision.reasons.get(job.id)
            if r is not None and r.code != "dependency":
                reasons.append(r)
            elif r is None and job.id in decision.dispatch:
                reasons.append(policies.Reason("next", "dispatched at the next cycle",
                                               "nothing holds it back: the poller dispatches it at its next cycle"))
            n_ahead = len(ahead)
            position = n_ahead + 1
            yours = [i for i, owner in ahead if owner == job.owner]
        if job.status is JobStatus.DISPATCHING:
            reasons.append(policies.Reason("dispatching", job.reason or "being submitted", job.reason or ""))
        scheduler_reason = None
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and (job.reason or "").startswith("pending in "):
            scheduler_reason = job.reason.split(": ", 1)[1] if ": " in job.reason else job.reason
        if job.array_spec and job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            r = self._throttle(job, shown.tasks)
            if r is not None:
                reasons.append(r)
        if t is not None:
            where, reasons = self._task_why(job, t, where, reasons, shown.tasks)
        return Why(job=job, task=t, where=where, reasons=reasons, position=position, ahead=n_ahead,
                   ahead_yours=yours, scheduler_reason=scheduler_reason, since=since, tasks=shown.tasks)

    def repo_mode(self) -> dict:
        with self.db.read():
            return self.repo.get_setting(MODE_KEY).value

    @staticmethod
    def _throttle(job: Job, tasks: dict[str, int] | None) -> policies.Reason | None:
        spec = ArraySpec.parse(job.array_spec, internal=True)
        tasks = tasks or {}
        running, waiting = tasks.get("RUNNING", 0), tasks.get("QUEUED", 0)
        if spec.limit is None or not waiting or running < spec.limit:
            return None
        return policies.Reason("throttle", f"waiting: throttle, at most {spec.limit} of its tasks run at once",
                               f"throttle: {running} of at most {spec.limit} tasks running, {waiting} waiting")

    @staticmethod
    def _task_why(job: Job, t: ArrayTask, where: str, reasons: list, tasks) -> tuple[str, list]:
        if t.status is JobStatus.HELD:
            return "metasched" if where in ("metasched", "dispatching") else "scheduler", [
                policies.Reason("held", "held", f"task {t.ref} is held: release it to let it start")]
        if t.status is JobStatus.RUNNING:
            return "running", []
        if t.status.final:
            return "ended", []
        if t.status is JobStatus.QUEUED:
            return "scheduler", [r for r in reasons if r.code == "throttle"]
        return where, reasons       # waiting with its array

    def _reason_since(self, job: Job) -> str | None:
        """When the job's current note was first recorded (the event that recorded it)."""
        events = self.repo.list_job_events(job.id)
        at = None
        for e in reversed(events):
            if e.reason != job.reason:
                break
            at = e.at
        return at

    def _last_actor(self, job: Job, status: JobStatus) -> str:
        events = self.repo.list_job_events(job.id)
        e = next((e for e in reversed(events) if e.new_status == status.value), None)
        return f" by {e.actor} since {e.at}" if e is not None else ""

    # -- tokens -------------------------------------------------------------------------------
    def create_token(self, caller: Caller, body: dict) -> NewToken:
        self.require(caller)
        user = body.get("user") or caller.user
        if user != caller.user and not caller.is_admin:
            raise Forbidden("only admins can create tokens for another user")
        if user != caller.user:
            self.authority.check_owner(user, "user")
        days = body.get("expires_in_days", self.config.auth.token_lifetime_days)
        if days > self.config.auth.token_lifetime_days and not caller.is_admin:
            raise Invalid(f"expires_in_days: at most {self.config.auth.token_lifetime_days:g} days",
                          field="expires_in_days")
        now = self.now()
        expires = format_time(parse_time(now) + _dt.timedelta(days=days))
        secret = new_secret()
        with self.db.write():
            token = self.repo.insert_token(user=user, secret_hash=hash_secret(secret),
                                           description=body.get("description", ""), created_by=caller.user,
                                           now=now, expires_at=expires)
        return NewToken(token, secret)

    def list_tokens(self, caller: Caller) -> list[Token]:
        self.require(caller)
        with self.db.read():
            return self.repo.list_tokens(None if caller.is_admin else caller.user)

    # -- the dashboard's sessions (web/ui.py) --------------------------------------------------
    SESSION_DESCRIPTION = "dashboard session"

    def open_session(self, secret: str) -> tuple[Caller, NewToken]:
        """A dashboard login: a valid token buys a session, itself a token of the same user (listed by
        GET /tokens as a 'dashboard session', revoked at logout) that ends after auth.session_hours or
        with the token it was opened with, whichever comes first. A bad token is a 401 and opens nothing."""
        now = self.now()
        with self.db.write():
            row = self.repo.find_token(secret_hash=hash_secret(secret), now=now)
            if row is None:
                raise Unauthenticated("invalid, expired or revoked token")
            ends = format_time(parse_time(now) + _dt.timedelta(hours=self.config.auth.session_hours))
            session = new_secret()
            token = self.repo.insert_token(user=row.user, secret_hash=hash_secret(session),
                                           description=self.SESSION_DESCRIPTION, created_by=row.user, now=now,
                                           expires_at=min(ends, row.expires_at))
        return self.authority.caller(row.user, "session"), NewToken(token, session)

    def close_session(self, secret: str) -> None:
        """Logout: the session's token is revoked (an unknown or ended one: nothing to do)."""
        now = self.now()
        with self.db.write():
            row = self.repo.find_token(secret_hash=hash_secret(secret), now=now)
            if row is not None:
                self.repo.revoke_token(id=row.id, now=now)

    def revoke_token(self, caller: Caller, token_id: int) -> Token:
        self.require(caller)
        now = self.now()
        with self.db.write():
            tok = self.repo.get_token(token_id)
            if tok is None or (tok.user != caller.user and not caller.is_admin):
                raise NotFound("token", token_id)
            self.repo.revoke_token(id=token_id, now=now)
            return self.repo.get_token(token_id)

    # -- hooks --------------------------------------------------------------------------------
    def _notify(self) -> None:
        if self.on_new_work is not None:
            self.on_new_work()

    # -- what jobs used (issue 15) ------------------------------------------------------------
    def job_metrics(self, caller: Caller, job_id: int, *, since: str = "", until: str = "9999", after: int = 0,
                    limit: int = 100) -> JobMetrics:
        """A job's samples over time (yours; admins: anyone's; another user's job is not found)."""
        self.require(caller)
        limit = max(1, min(limit, MAX_PAGE))
        with self.db.read():
            job = self._visible_job(caller, job_id)
            latest = self.repo.get_job_usage(job_id)
            rows = self.repo.list_job_samples(job_id=job_id, since=since, until=until, after=after, limit=limit + 1)
        stride = latest.stride if latest is not None else 1
        return JobMetrics(job, latest, rows[:limit], len(rows) > limit,
                          self.config.metrics.job_sample_interval * stride)

    def node_metrics(self, caller: Caller, node_id: int, *, since: str = "", until: str = "9999", after: int = 0,
                     limit: int = 100) -> NodeMetrics:
        self.require(caller)
        limit = max(1, min(limit, MAX_PAGE))
        with self.db.read():
            node = self.repo.get_node(node_id)
            if node is None:
                raise NotFound("node", node_id)
            rows = self.repo.list_node_samples(node_id=node_id, since=since, until=until, after=after,
                                               limit=limit + 1)
        return NodeMetrics(node, rows[:limit], len(rows) > limit)

    def usage_report(self, caller: Caller, *, since: str, until: str, group_by: str = "user",
                     owner: str | None = None) -> UsageReport:
        """What the jobs that ended in [since, until) used, per user or per queue: a user's report covers their
        own jobs only (asking for another user's is refused, as listings are); admins see everyone's, or one
        user's with ``owner``. The CPU split per node and scheduler is the cluster's (no user's rows)."""
        if group_by not in ("user", "queue"):
            raise Invalid(f"group_by: expected user or queue, got {group_by!r}", field="group_by")
        scope, _ = self._listing_scope(caller, owner, 1)
        with self.db.read():
            rows = self.repo.usage_jobs(since=since, until=until, owner=scope)
            # the enforcement measurements are summed per bucket: those that overlap the window count whole
            bucket = self.config.metrics.share_bucket_seconds
            totals = self.repo.share_totals(
                since=format_time(parse_time(since) - _dt.timedelta(seconds=bucket) + _dt.timedelta(microseconds=1)),
                until=until)
            queues = {q.id: q for q in self.repo.list_queues()}
            for qid in {r["queue_id"] for r in rows} | {t.queue_id for t in totals}:
                if qid not in queues:
                    q = self.repo.get_queue(qid)
                    if q is not None:
                        queues[qid] = q
            nodes = {n.id: n for n in self.repo.list_nodes()}
        groups: dict[str, list[dict]] = {}
        for r in rows:
            key = r["owner"] if group_by == "user" else str(r["queue_id"])
            groups.setdefault(key, []).append(r)

        def name(key: str) -> str:
            if group_by == "user":
                return key
            q = queues.get(int(key))
            return q.name if q is not None else key
        out = [_usage_group(k, name(k), v) for k, v in sorted(groups.items(), key=lambda kv: name(kv[0]).lower())]
        return UsageReport(since=since, until=until, group_by=group_by, scope=scope, groups=out,
                           total=_usage_group("total", "total", rows), shares=_share_usage(totals, nodes, queues))


def utc_text(t: _dt.datetime) -> str:
    """A time as the database writes it (UTC, fixed width: comparable as text)."""
    return format_time(t)


def days_before(text: str, days: float) -> str:
    return format_time(parse_time(text) - _dt.timedelta(days=days))


def _percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (a value that occurred, never interpolated)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100.0 * len(sorted_values)) - 1)]


def _seconds_between(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    try:
        t0 = _dt.datetime.fromisoformat(a.replace("Z", "+00:00"))
        t1 = _dt.datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (t1 - t0).total_seconds())    # hosts' clocks may differ by a little: never a negative wait


def _usage_group(key: str, name: str, rows: list[dict]) -> UsageGroup:
    cpu = [r["acct_cpu_seconds"] for r in rows if r["acct_cpu_seconds"] is not None]
    wall = [r["acct_wall_seconds"] for r in rows if r["acct_wall_seconds"] is not None]
    waits = sorted(w for w in (_seconds_between(r["created_at"], r["started_at"]) for r in rows) if w is not None)
    by = {s: sum(1 for r in rows if r["status"] == s) for s in ("COMPLETED", "ERROR", "CANCELLED")}
    return UsageGroup(key=key, name=name, jobs=len(rows), completed=by["COMPLETED"], failed=by["ERROR"],
                      cancelled=by["CANCELLED"], cpu_hours=sum(cpu) / 3600.0, cpu_jobs=len(cpu),
                      wall_hours=sum(wall) / 3600.0, wall_jobs=len(wall), wait_p50_seconds=_percentile(waits, 50),
                      wait_p95_seconds=_percentile(waits, 95), waited_jobs=len(waits))


def _share_usage(totals, nodes: dict, queues: dict) -> list[ShareUsage]:
    per_node: dict[int, float] = {}
    for t in totals:
        per_node[t.node_id] = per_node.get(t.node_id, 0.0) + t.cpu_seconds
    return [ShareUsage(node=nodes.get(t.node_id), node_id=t.node_id, queue=queues.get(t.queue_id),
                       queue_id=t.queue_id, seconds=t.seconds, cpu_seconds=t.cpu_seconds,
                       measured_share=100.0 * t.cpu_seconds / per_node[t.node_id] if per_node[t.node_id] else None,
                       target_share=t.target_seconds / t.seconds if t.seconds else None)
            for t in totals]

