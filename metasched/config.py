"""Configuration: one YAML file (JSON is YAML, so the original project's JSON configs load too).

Every error is a ConfigError whose message starts with the key path and says what was expected,
e.g. ``schedulers[1].master: 3 is not a node index (0..1)``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError
from .model import Policy


@dataclass(frozen=True)
class NodeConfig:
    ip: str
    port: int = 22
    transport: str = "ssh"          # ssh | local (run commands on this machine without SSH)


@dataclass(frozen=True)
class SchedulerConfig:
    name: str
    master: int
    weight: int
    type: str                       # one of backends.TYPES
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PollerConfig:
    enabled: bool = True
    interval: float = 5.0           # seconds between full cycles
    wakeup: float = 0.5             # how often the lease holder checks for new work between cycles
    max_dispatch_per_cycle: int = 500
    dynamic_half_life: float = 600.0
    cycle_deadline: float = 10.0    # seconds the status calls and node agents of one cycle may take, together
    max_attempts: int = 5           # dispatch attempts that did not reach the scheduler before a job is ERROR
    retry_backoff: float = 10.0     # seconds before the 2nd attempt; doubles each time (at most 10 minutes)


@dataclass(frozen=True)
class RetentionConfig:
    jobs_days: float = 180.0        # finished jobs (and their events) older than this are removed; 0: never
    cluster_events_days: float = 365.0
    poll_cycles: int = 1000         # cycle records kept
    batch: int = 1000               # at most this many jobs removed per cycle
    metrics_days: float = 30.0      # job and node samples and enforcement measurements older than this; 0: never


@dataclass(frozen=True)
class MetricsConfig:
    """What the node agents measure while jobs run, and how much of it is kept (issue 15)."""
    enabled: bool = True               # each job's CPU time and memory, the nodes' cpu, memory, disk, load
    job_sample_interval: float = 30.0  # seconds between the stored samples of a running job
    max_samples_per_job: int = 240     # beyond: every other sample goes and the interval doubles
    node_sample_interval: float = 60.0
    share_bucket_seconds: float = 300.0   # enforcement measurements summed per bucket, node and scheduler
    disk_paths: tuple[str, ...] = ()   # filesystems reported beside those the jobs work in


@dataclass(frozen=True)
class SshConfig:
    known_hosts: str = "~/.ssh/known_hosts"
    key_file: str | None = None     # None: the service user's default keys
    user: str | None = None         # None: the service user
    connect_timeout: float = 5.0
    command_timeout: float = 30.0
    max_parallel: int = 8


@dataclass(frozen=True)
class AuthConfig:
    admins: tuple[str, ...] = ()
    admin_group: str | None = None
    proxy_user: str | None = None   # the peer (nginx) allowed to name the user in proxy_header
    proxy_header: str = "X-Remote-User"
    token_lifetime_days: float = 30.0
    session_hours: float = 12.0     # a dashboard login's session cookie lasts this long (at most the token's life)
    min_uid: int = 1000             # job owners must be ordinary users (Grid Engine's min_uid)


@dataclass(frozen=True)
class EnforcementConfig:
    method: str = "auto"            # auto | cgroup | nice | none
    parent_group: str = "metasched"
    helper: str | None = None       # installed node helper run with sudo -n; None: sent inline
    feedback: bool = True           # correct the written weights while a busy group's measured share is off
    feedback_caps: bool = True      # and cap a group's CPU where weights cannot, while the others take it


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8000
    socket: str | None = "/run/metasched/api.sock"
    database: str = "/db/db.sqlite3"
    database_group: str | None = None   # may read the database (0640); None: the service user only (0600)
    workers: int = 2
    threads: int = 4                # per worker: complete requests run in these (see web/worker.py)
    request_timeout: float = 10.0   # seconds a client has to send a whole request once it began
    keepalive: float = 15.0         # seconds an idle connection stays open
    max_connections_per_peer: int = 128   # per worker and user (unix socket) or address (TCP)
    max_body_bytes: int = 64 * 1024
    page_limit: int = 100
    output_timeout: float = 10.0    # seconds GET /jobs/{id}/output may wait for the scheduler's master node
    output_max_bytes: int = 1024 * 1024   # the most bytes one GET /jobs/{id}/output returns


@dataclass(frozen=True)
class WebhookConfig:
    """A site-wide webhook: every job event (and with ``cluster``, every cluster event) is POSTed to it."""
    name: str
    url: str
    secret: str                     # HMAC-SHA256 key of the X-Metasched-Signature header
    cluster: bool = False


@dataclass(frozen=True)
class SmtpConfig:
    host: str | None = None         # None: no mail is sent (a job asking for mail is refused with a 400)
    port: int = 25
    starttls: bool = False
    sender: str = "metasched@localhost"     # the config's key is `from`
    username: str | None = None
    password_file: str | None = None        # read at each connection; never in the config itself
    timeout: float = 10.0


@dataclass(frozen=True)
class EventsConfig:
    webhooks: tuple[WebhookConfig, ...] = ()
    smtp: SmtpConfig = SmtpConfig()
    allow_loopback: bool = False    # webhooks may point at loopback and this host's addresses (never this service)
    retry_for: float = 86400.0      # seconds a delivery is retried before it is given up (state failed)
    retry_backoff: float = 5.0      # seconds before the first retry; doubles each time, at most retry_max_delay
    retry_max_delay: float = 600.0
    timeout: float = 10.0           # seconds one webhook attempt (connect, send, answer) may take
    max_parallel: int = 8           # deliveries in flight at once
    stream_heartbeat: float = 15.0  # seconds between keep-alive comments on an idle event stream


@dataclass(frozen=True)
class WorkflowsConfig:
    cancel_impossible: bool = True  # a dependency that can no longer be met cancels its job (false: it waits)
    max_array_tasks: int = 100_000  # tasks one array may have


@dataclass(frozen=True)
class Config:
    policy: Policy
    high_priority: int | None
    nodes: tuple[NodeConfig, ...]
    schedulers: tuple[SchedulerConfig, ...]
    poller: PollerConfig = PollerConfig()
    ssh: SshConfig = SshConfig()
    auth: AuthConfig = AuthConfig()
    enforcement: EnforcementConfig = EnforcementConfig()
    server: ServerConfig = ServerConfig()
    source: str = "<memory>"
    retention: RetentionConfig = RetentionConfig()
    metrics: MetricsConfig = MetricsConfig()
    events: EventsConfig = EventsConfig()
    workflows: WorkflowsConfig = WorkflowsConfig()


# -- validation helpers: each takes the key path for its message --------------------------------

def _is_int_like(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v) is not None)


def _int(v: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
    if not _is_int_like(v):
        raise ConfigError(f"{path}: expected an integer, got {v!r}")
    n = int(v)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise ConfigError(f"{path}: {n} is out of range ({rng})")
    return n


def _num(v: Any, path: str) -> float:
    """A positive number (ints, floats, or numeric strings as in the original JSON configs)."""
    if isinstance(v, bool):
        raise ConfigError(f"{path}: expected a number, got {v!r}")
    try:
        n = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: expected a number, got {v!r}") from None
    if not n > 0 or n == float("inf"):
        raise ConfigError(f"{path}: expected a positive number, got {v!r}")
    return n


def _nonneg(v: Any, path: str) -> float:
    """A number >= 0 (0 meaning "never" where the option says so)."""
    if not isinstance(v, bool):
        try:
            if float(v) == 0:
                return 0.0
        except (TypeError, ValueError):
            pass
    return _num(v, path)


def _str(v: Any, path: str, allow_none: bool = False) -> str | None:
    if v is None and allow_none:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{path}: expected a non-empty string, got {v!r}")
    return v.strip()


def _bool(v: Any, path: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no"):
        return v.lower() in ("true", "yes")
    raise ConfigError(f"{path}: expected true or false, got {v!r}")


def _mapping(v: Any, path: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(v).__name__}")
    return v


def _no_unknown(d: dict, allowed: set[str], path: str) -> None:
    unknown = sorted(set(map(str, d)) - allowed)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (expected one of: {', '.join(sorted(allowed))})")


def _choice(v: Any, path: str, choices: list[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"{path}: expected one of {', '.join(choices)}, got {v!r}")
    return v


def _section(raw: dict, name: str, cls, spec: dict) -> Any:
    """Build an optional section dataclass from raw[name] with per-key converters."""
    d = _mapping(raw.get(name), name)
    _no_unknown(d, set(spec), name)
    kwargs = {}
    for key, conv in spec.items():
        if key in d:
            kwargs[key] = conv(d[key], f"{name}.{key}")
    return cls(**kwargs)


# -- public API ---------------------------------------------------------------------------------

def load(path: str, overrides: dict | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}") from None
    return parse(raw, source=path, overrides=overrides)


def parse(raw: Any, source: str = "<memory>", overrides: dict | None = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("(top level): expected a mapping with policy, nodes and schedulers")
    if set(raw) == {"cluster"}:           # the original project's JSON layout
        raw = _mapping(raw["cluster"], "cluster")
    _no_unknown(raw, {"policy", "nodes", "schedulers", "poller", "ssh", "auth", "enforcement", "server",
                      "retention", "metrics", "events", "workflows"}, "")

    # nodes
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ConfigError("nodes: expected a non-empty list of {ip, port}")
    nodes = []
    seen = set()
    for i, n in enumerate(nodes_raw):
        p = f"nodes[{i}]"
        n = _mapping(n, p)
        _no_unknown(n, {"ip", "port", "transport"}, p)
        if "ip" not in n:
            raise ConfigError(f"{p}.ip: required (the node's address)")
        node = NodeConfig(
            ip=_str(n["ip"], f"{p}.ip"),
            port=_int(n.get("port", 22), f"{p}.port", 1, 65535),
            transport=_choice(n.get("transport", "ssh"), f"{p}.transport", ["ssh", "local"]),
        )
        if (node.ip, node.port) in seen:
            raise ConfigError(f"{p}: duplicate node {node.ip}:{node.port}")
        seen.add((node.ip, node.port))
        nodes.append(node)

    # schedulers
    sch_raw = raw.get("schedulers")
    if not isinstance(sch_raw, list) or not sch_raw:
        raise ConfigError("schedulers: expected a non-empty list of {name, master, weight}")
    schedulers = []
    names = set()
    for i, s in enumerate(sch_raw):
        p = f"schedulers[{i}]"
        s = _mapping(s, p)
        _no_unknown(s, {"name", "master", "weight", "type", "options"}, p)
        for key in ("name", "master"):
            if key not in s:
                raise ConfigError(f"{p}.{key}: required")
        name = _str(s["name"], f"{p}.name")
        if name.lower() in names:
            raise ConfigError(f"{p}.name: duplicate scheduler name {name!r}")
        names.add(name.lower())
        if not _is_int_like(s["master"]):
            raise ConfigError(f"{p}.master: expected a node index, got {s['master']!r}")
        master = int(s["master"])
        if not 0 <= master < len(nodes):
            raise ConfigError(f"{p}.master: {master} is not a node index (0..{len(nodes) - 1})")
        weight = _int(s.get("weight", 0), f"{p}.weight", 0, 100)
        from .backends import BACKENDS, TYPES, infer_type
        if "type" in s:
            stype = _choice(s["type"], f"{p}.type", list(TYPES))
        else:
            stype = infer_type(name)
            if stype is None:
                raise ConfigError(f"{p}.type: required, cannot infer it from name {name!r} "
                                  f"(expected one of {', '.join(TYPES)})")
        options = _mapping(s.get("options"), f"{p}.options")
        _no_unknown(options, set(BACKENDS[stype].OPTIONS), f"{p}.options")
        schedulers.append(SchedulerConfig(name, master, weight, stype, dict(options)))

    # policy
    pol = _mapping(raw.get("policy"), "policy")
    _no_unknown(pol, {"name", "high_priority", "highest_priority"}, "policy")
    if "name" not in pol:
        raise ConfigError(f"policy.name: required (one of {', '.join(p.value for p in Policy)})")
    policy = Policy(_choice(pol["name"], "policy.name", [p.value for p in Policy]))
    hp_key = "high_priority" if "high_priority" in pol else "highest_priority"
    high_priority = None
    if hp_key in pol and pol[hp_key] is not None:
        if not _is_int_like(pol[hp_key]):
            raise ConfigError(f"policy.{hp_key}: expected a scheduler index, got {pol[hp_key]!r}")
        high_priority = int(pol[hp_key])
        if not 0 <= high_priority < len(schedulers):
            raise ConfigError(f"policy.{hp_key}: {high_priority} is not a scheduler index (0..{len(schedulers) - 1})")
    if policy is Policy.BEST_EFFORT and high_priority is None:
        raise ConfigError("policy.high_priority: required for best_effort (index into schedulers)")

    poller = _section(raw, "poller", PollerConfig, {
        "enabled": _bool,
        "interval": _num,
        "wakeup": _num,
        "max_dispatch_per_cycle": lambda v, p: _int(v, p, 1, 100000),
        "dynamic_half_life": _num,
        "cycle_deadline": _num,
        "max_attempts": lambda v, p: _int(v, p, 1, 1000),
        "retry_backoff": _num,
    })
    retention = _section(raw, "retention", RetentionConfig, {
        "jobs_days": lambda v, p: _nonneg(v, p),
        "cluster_events_days": lambda v, p: _nonneg(v, p),
        "poll_cycles": lambda v, p: _int(v, p, 1, 10_000_000),
        "batch": lambda v, p: _int(v, p, 1, 1_000_000),
        "metrics_days": lambda v, p: _nonneg(v, p),
    })

    def _paths(v, p):
        if not isinstance(v, list) or len(v) > 32 or not all(isinstance(x, str) and x.startswith("/") for x in v):
            raise ConfigError(f"{p}: expected a list of at most 32 absolute paths, got {v!r}")
        return tuple(v)

    metrics = _section(raw, "metrics", MetricsConfig, {
        "enabled": _bool,
        "job_sample_interval": _num,
        "max_samples_per_job": lambda v, p: _int(v, p, 2, 1_000_000),
        "node_sample_interval": _num,
        "share_bucket_seconds": _num,
        "disk_paths": _paths,
    })
    ssh = _section(raw, "ssh", SshConfig, {
        "known_hosts": _str,
        "key_file": lambda v, p: _str(v, p, allow_none=True),
        "user": lambda v, p: _str(v, p, allow_none=True),
        "connect_timeout": _num,
        "command_timeout": _num,
        "max_parallel": lambda v, p: _int(v, p, 1, 256),
    })

    def _names(v, p):
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ConfigError(f"{p}: expected a list of user names, got {v!r}")
        return tuple(v)

    auth = _section(raw, "auth", AuthConfig, {
        "admins": _names,
        "admin_group": lambda v, p: _str(v, p, allow_none=True),
        "proxy_user": lambda v, p: _str(v, p, allow_none=True),
        "proxy_header": _str,
        "token_lifetime_days": _num,
        "session_hours": _num,
        "min_uid": lambda v, p: _int(v, p, 1, 2**31),
    })
    enforcement = _section(raw, "enforcement", EnforcementConfig, {
        "method": lambda v, p: _choice(v, p, ["auto", "cgroup", "nice", "none"]),
        "parent_group": lambda v, p: _validate_group(_str(v, p), p),
        "helper": lambda v, p: _str(v, p, allow_none=True),
        "feedback": _bool,
        "feedback_caps": _bool,
    })
    server = _section(raw, "server", ServerConfig, {
        "host": _str,
        "port": lambda v, p: _int(v, p, 0, 65535),
        "socket": lambda v, p: _str(v, p, allow_none=True),
        "database": _str,
        "database_group": lambda v, p: None if v is None else _validate_group(_str(v, p), p),
        "workers": lambda v, p: _int(v, p, 1, 64),
        "threads": lambda v, p: _int(v, p, 1, 256),
        "request_timeout": _num,
        "keepalive": _num,
        "max_connections_per_peer": lambda v, p: _int(v, p, 1, 100000),
        "max_body_bytes": lambda v, p: _int(v, p, 1024, 64 * 1024 * 1024),
        "page_limit": lambda v, p: _int(v, p, 1, 10000),
        "output_timeout": _num,
        "output_max_bytes": lambda v, p: _int(v, p, 1024, 16 * 1024 * 1024),
    })
    events = _events(raw)
    workflows = _section(raw, "workflows", WorkflowsConfig, {
        "cancel_impossible": _bool,
        "max_array_tasks": lambda v, p: _int(v, p, 1, 10_000_000),
    })
    if overrides:
        server = _replace(server, **{k: v for k, v in overrides.get("server", {}).items() if v is not None})
        ssh = _replace(ssh, **{k: v for k, v in overrides.get("ssh", {}).items() if v is not None})
        poller = _replace(poller, **{k: v for k, v in overrides.get("poller", {}).items() if v is not None})
    return Config(policy, high_priority, tuple(nodes), tuple(schedulers), poller, ssh, auth, enforcement,
                  server, source, retention, metrics, events, workflows)


def webhook_url_problem(url) -> str | None:
    """What is wrong with a webhook URL as text (where it points is checked when it is used), or None."""
    import urllib.parse
    if not isinstance(url, str) or not url:
        return "expected an http:// or https:// URL"
    if any(c in url for c in "\x00\r\n\t ") or len(url) > 2048:
        return "expected a URL of at most 2048 characters without spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "a URL with a user name or password is not taken (sign with the hook's secret instead)"
    return None


def _events(raw: dict) -> EventsConfig:
    d = _mapping(raw.get("events"), "events")
    _no_unknown(d, {"webhooks", "smtp", "allow_loopback", "retry_for", "retry_backoff", "retry_max_delay",
                    "timeout", "max_parallel", "stream_heartbeat"}, "events")
    hooks = []
    raw_hooks = d.get("webhooks") or []
    if not isinstance(raw_hooks, list):
        raise ConfigError("events.webhooks: expected a list of {name, url, secret}")
    names = set()
    for i, h in enumerate(raw_hooks):
        p = f"events.webhooks[{i}]"
        h = _mapping(h, p)
        _no_unknown(h, {"name", "url", "secret", "secret_file", "cluster"}, p)
        for key in ("name", "url"):
            if key not in h:
                raise ConfigError(f"{p}.{key}: required")
        name = _str(h["name"], f"{p}.name")
        if name.lower() in names:
            raise ConfigError(f"{p}.name: duplicate webhook name {name!r}")
        names.add(name.lower())
        problem = webhook_url_problem(h["url"])
        if problem:
            raise ConfigError(f"{p}.url: {problem}, got {h['url']!r}")
        if ("secret" in h) == ("secret_file" in h):
            raise ConfigError(f"{p}.secret: give the hook's secret (or secret_file), one of them")
        if "secret" in h:
            secret = _str(h["secret"], f"{p}.secret")
        else:
            path = expand(_str(h["secret_file"], f"{p}.secret_file"))
            try:
                with open(path, encoding="utf-8") as f:
                    secret = f.read().strip()
            except OSError as exc:
                raise ConfigError(f"{p}.secret_file: cannot read {path}: {exc.strerror}") from None
            if not secret:
                raise ConfigError(f"{p}.secret_file: {path} is empty")
        hooks.append(WebhookConfig(name, h["url"], secret, _bool(h.get("cluster", False), f"{p}.cluster")))
    sm = _mapping(d.get("smtp"), "events.smtp")
    _no_unknown(sm, {"host", "port", "starttls", "from", "username", "password_file", "timeout"}, "events.smtp")
    smtp = SmtpConfig(
        host=_str(sm["host"], "events.smtp.host", allow_none=True) if "host" in sm else None,
        port=_int(sm.get("port", 25), "events.smtp.port", 1, 65535),
        starttls=_bool(sm.get("starttls", False), "events.smtp.starttls"),
        sender=_mail_address(sm.get("from", SmtpConfig.sender), "events.smtp.from"),
        username=_str(sm.get("username"), "events.smtp.username", allow_none=True),
        password_file=_str(sm.get("password_file"), "events.smtp.password_file", allow_none=True),
        timeout=_num(sm.get("timeout", 10.0), "events.smtp.timeout"),
    )
    if smtp.password_file and not smtp.username:
        raise ConfigError("events.smtp.username: required with password_file")
    conv = {"allow_loopback": _bool, "retry_for": _num, "retry_backoff": _num, "retry_max_delay": _num,
            "timeout": _num, "max_parallel": lambda v, p: _int(v, p, 1, 256), "stream_heartbeat": _num}
    return EventsConfig(webhooks=tuple(hooks), smtp=smtp,
                        **{k: c(d[k], f"events.{k}") for k, c in conv.items() if k in d})


MAIL_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def mail_address_problem(v) -> str | None:
    if not isinstance(v, str) or len(v) > 254 or not MAIL_ADDRESS.fullmatch(v):
        return "expected a mail address (user@host)"
    return None


def _mail_address(v, path: str) -> str:
    problem = mail_address_problem(v)
    if problem:
        raise ConfigError(f"{path}: {problem}, got {v!r}")
    return v


def _validate_group(name: str, path: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{path}: expected a plain name (letters, digits, _ . -), got {name!r}")
    return name


def _replace(obj, **kw):
    from dataclasses import replace
    return replace(obj, **kw) if kw else obj


def expand(path: str) -> str:
    return os.path.expanduser(path)
