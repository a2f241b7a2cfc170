"""GET /metrics on the real server: strict Prometheus text format, and the same numbers as the API.

The poller cannot run here without scheduler daemons, so what it would write (node liveness, lease,
a poll cycle, dispatch outcomes) is written with the repository methods the engine itself uses, into
the running server's database; the metrics and the API then read the same rows."""
from __future__ import annotations

import math
import re
import time

import pytest

from metasched import lifecycle
from metasched.db.core import Database, epoch_to_time, utcnow
from metasched.db.repository import Repository
from metasched.engine.lease import Identity, Lease
from metasched.model import JobStatus

from .conftest import BASE_CONFIG

CONFIG = dict(BASE_CONFIG,
              nodes=[{"ip": "127.0.0.1", "transport": "local"}, {"ip": "127.0.0.2", "port": 2222},
                     {"ip": "127.0.0.3", "port": 22}],
              schedulers=[{"name": "local", "type": "local", "master": 0, "weight": 60},
                          {"name": "Grid \"Engine\"", "type": "sge", "master": 1, "weight": 40}])

# -- a strict parser of the text exposition format 0.0.4 -----------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)(?: (-?\d+))?$")
_LABELS = re.compile(rf"{_LABEL}(?:,{_LABEL})*")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], v)


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple, float]]:
    """Returns ({family: type}, {(name, frozenset(labels)): value}); fails on anything malformed."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple, float] = {}
    seen_samples_of: set[str] = set()
    for no, line in enumerate(text[:-1].split("\n"), 1):
        assert line, f"line {no}: empty line"
        if line.startswith("#"):
            m = re.match(rf"^# (HELP|TYPE) ({_NAME}) (.*)$", line)
            assert m, f"line {no}: bad comment {line!r}"
            kind, name, rest = m.groups()
            if kind == "HELP":
                assert name not in helps, f"line {no}: second HELP for {name}"
                helps.add(name)
            else:
                assert name not in types, f"line {no}: second TYPE for {name}"
                assert name not in seen_samples_of, f"line {no}: TYPE of {name} after its samples"
                assert rest in _TYPES, f"line {no}: unknown type {rest!r}"
                types[name] = rest
            continue
        m = _SAMPLE.match(line)
        assert m, f"line {no}: not a sample line {line!r}"
        name, labels_text, value = m.group(1), m.group(2), m.group(3)
        assert labels_text is None or _LABELS.fullmatch(labels_text), f"line {no}: bad labels {labels_text!r}"
        assert re.fullmatch(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|Inf)|NaN", value), \
            f"line {no}: bad value {value!r}"
        labels = {}
        for lm in re.finditer(_LABEL, labels_text or ""):
            assert lm.group(1) not in labels, f"line {no}: label {lm.group(1)} twice"
            labels[lm.group(1)] = _unescape(lm.group(2))
        family = name if name in types else re.sub(r"_(sum|count|bucket)$", "", name)
        assert family in types, f"line {no}: sample {name} without a TYPE line before it"
        seen_samples_of.add(family)
        v = float(value)
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"line {no}: duplicate sample {line!r}"
        samples[key] = v
    return types, samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def test_the_parser_rejects_what_prometheus_would_reject():
    good = '# HELP a_total x\n# TYPE a_total counter\na_total{q="x\\"y"} 3\n'
    types, samples = parse_prometheus(good)
    assert value(samples, "a_total", q='x"y') == 3
    for bad in ['a 1\n', '# TYPE a gauge\na{q="x"} one\n', '# TYPE a gauge\na{q=x} 1\n',
                '# TYPE a gauge\na 1\na 2\n', '# TYPE a gauge\na 1', '# TYPE a gauge\n# TYPE a gauge\na 1\n']:
        with pytest.raises(AssertionError):
            parse_prometheus(bad)


# -- the real thing ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory(workers=2, config=CONFIG)


def poller_writes(srv) -> None:
    """What a poll cycle would record: node liveness, the lease, a cycle, dispatch outcomes."""
    db = Database(srv.db_path)
    repo = Repository(db)
    try:
        with db.read():
            nodes = repo.list_nodes()
            jobs = repo.list_jobs(after=0, limit=1000)
        now = utcnow()
        pending = [j for j in jobs if j.status is JobStatus.TO_BE_QUEUED]
        lease = Lease(db, Identity.of_this_process("poller"), 12.5)
        assert lease.acquire()
        with lease.fenced():
            repo.set_node_health(id=nodes[0].id, reachable=1, last_seen=now, last_error=None, now=now,
                                 load=(0.1, 0.2, 0.3), ncpus=2)
            repo.set_node_health(id=nodes[1].id, reachable=0, last_seen=None, last_error="connection refused",
                                 now=now)
            # nodes[2]: never checked
            repo.insert_poll_cycle(holder=lease.me.name, started_at=now, duration_ms=123.5,
                                   summary={"dispatched": 2}, errors={"node 127.0.0.2:2222": "connection refused"})
            for job, (mid, end, reason) in zip(pending, [
                    (JobStatus.DISPATCHING, JobStatus.RUNNING, "running on local as 17"),   # no native queue
                    (JobStatus.DISPATCHING, JobStatus.QUEUED, "queued in local as 18"),
                    (JobStatus.DISPATCHING, JobStatus.ERROR, "scheduler refused: no such file")]):
                for new, why in [(mid, "dispatching"), (end, reason)]:
                    job = lifecycle.transition(repo, job, new, actor="poller", reason=why, now=now)
                    assert job is not None
    finally:
        db.close()


def test_metrics_match_the_api(srv):
    made = []
    for user, queue, n in [("alice", "local", 4), ("bob", "local", 2), ("alice", 'Grid "Engine"', 3)]:
        for i in range(n):
            r = srv.as_user(user, "POST", "/jobs", {"queue": queue, "path": "/bin/true", "name": f"{user}{i}"})
            assert r.status == 201, r
            made.append(r.json()["id"])
    assert srv.as_user("alice", "POST", f"/jobs/{made[0]}/hold").status == 200
    assert srv.as_user("bob", "DELETE", f"/jobs/{made[4]}").status == 200
    poller_writes(srv)

    r = srv.tcp("GET", "/metrics")            # anonymous: no token, no peer credentials
    assert r.status == 200, r
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types, samples = parse_prometheus(r.body.decode("utf-8"))
    assert types["metasched_jobs"] == "gauge" and types["metasched_dispatches_total"] == "counter"

    queues = srv.root("GET", "/queues").json()["items"]
    assert len(queues) == 2
    total = 0
    for q in queues:
        for state, n in q["jobs"].items():
            assert value(samples, "metasched_jobs", queue=q["name"], state=state) == n, (q["name"], state)
            total += n
    assert total == len(made)
    assert value(samples, "metasched_jobs", queue="local", state="QUEUED") == 1
    assert value(samples, "metasched_jobs", queue="local", state="RUNNING") == 1
    assert value(samples, "metasched_jobs", queue="local", state="HELD") == 1

    events = [e for jid in made for e in srv.root("GET", f"/jobs/{jid}/events").json()["items"]]
    dispatched = sum(e["actor"] == "poller" and e["old_status"] == "DISPATCHING" and
                     e["new_status"] in ("QUEUED", "RUNNING") for e in events)
    refused = sum(e["actor"] == "poller" and e["new_status"] == "ERROR" and
                  e["reason"].startswith("scheduler refused") for e in events)
    assert (dispatched, refused) == (2, 1)
    assert value(samples, "metasched_dispatches_total", queue="local") == dispatched
    assert value(samples, "metasched_dispatch_failures_total", queue="local") == refused
    assert value(samples, "metasched_dispatches_total", queue='Grid "Engine"') == 0

    nodes = srv.root("GET", "/cluster/nodes").json()["items"]
    assert [n["reachable"] for n in nodes] == [True, False, None]
    for n in nodes:
        got = value(samples, "metasched_node_up", node=f"{n['ip']}:{n['port']}")
        assert got == (None if n["reachable"] is None else int(n["reachable"])), n

    status = srv.root("GET", "/status").json()["poller"]
    assert value(samples, "metasched_poller_lease_info", holder=status["lease"]["holder"]) == 1
    assert math.isclose(value(samples, "metasched_poller_lease_expires_seconds"), time.time() + 12.5, abs_tol=30)
    assert math.isclose(value(samples, "metasched_poll_cycle_duration_seconds"),
                        status["last_cycle"]["duration_ms"] / 1000)
    assert value(samples, "metasched_poll_cycle_errors") == len(status["last_cycle"]["errors"]) == 1


def test_metrics_carry_no_user_names(srv):
    body = srv.tcp("GET", "/metrics").body.decode()
    for secret in ("alice", "bob", "/bin/true"):
        assert secret not in body


def test_metrics_route_is_in_the_openapi_document(srv):
    from openapi_spec_validator import validate
    doc = srv.root("GET", "/openapi.json").json()
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    validate(doc)
