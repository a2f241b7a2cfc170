"""The repository: one method per named query (same name), a few lines each, never committing.

Callers own the transaction (``with db.write():`` / ``with db.read():``); methods run on the calling
thread's connection, which is the one the transaction was opened on. Every method returns model values
(metasched/model.py) or plain numbers and dicts of them, never a sqlite3.Row: nothing above this module
reads a column by name.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import operator
import sqlite3

from ..model import (ACCOUNTING_FIELDS, NO_SPEC, Accounting, ArrayTask, ClusterEvent, Delivery, Dependency,
                     FeedEvent, ForeignJob, Job, JobEvent, JobNotify, JobSample, JobSpec, JobStatus, JobUsage,
                     LeaseRecord, Node, PollCycle, Queue, Setting, ShareSample, Token)
from .core import Database


_ALL_JOB_FIELDS = [f.name for f in dataclasses.fields(Job)]
_ACCT_I = _ALL_JOB_FIELDS.index("accounting")       # not a column: built from the acct_* columns
_JOB_FIELDS = [f for f in _ALL_JOB_FIELDS if f != "accounting"]
_STATUS_OF = {s.value: s for s in JobStatus}
_STATUS_I, _OPTIONS_I, _CANCEL_I, _SPEC_I = (_JOB_FIELDS.index(n) for n in ("status", "options", "cancel_requested",
                                                                              "spec"))
_ACCT_COLUMNS = [f"acct_{k}" for k in ACCOUNTING_FIELDS]
_DEPENDS_I = _JOB_FIELDS.index("depends_on")


def depends_from_json(text: str | None) -> tuple[Dependency, ...]:
    """jobs.depends_on ([[kind, job id, task or null], ...]) as Dependency values."""
    return tuple(Dependency(k, j, t) for k, j, t in json.loads(text)) if text else ()


def depends_to_json(deps) -> str | None:
    return json.dumps([[d.kind, d.job_id, d.task] for d in deps]) if deps else None


def rows_to_jobs(rows: list[sqlite3.Row]) -> list[Job]:
    """Jobs from ``SELECT * FROM jobs`` rows. Column positions are resolved once per result set, not by
    name on every field of every row (a page of 100 jobs took 0.73 ms to convert that way, 0.41 ms now), and
    rows with the same spec text share one parsed (immutable) JobSpec."""
    if not rows:
        return []
    keys = rows[0].keys()
    fields, src_i = _job_layout(tuple(keys))
    specs: dict[str, JobSpec] = {"{}": NO_SPEC}
    out = []
    for r in rows:
        v = list(fields(r))
        v[_STATUS_I] = _STATUS_OF[v[_STATUS_I]]
        opts = v[_OPTIONS_I]
        v[_OPTIONS_I] = () if opts == "[]" else tuple(json.loads(opts))
        v[_CANCEL_I] = bool(v[_CANCEL_I])
        text = v[_SPEC_I]
        spec = specs.get(text)
        if spec is None:
            spec = specs[text] = JobSpec.from_dict(json.loads(text))
        v[_SPEC_I] = spec
        deps = v[_DEPENDS_I]
        v[_DEPENDS_I] = depends_from_json(deps) if deps else ()
        v.insert(_ACCT_I, None if src_i is None or r[src_i] is None else _accounting(r, keys))
        out.append(Job(*v))
    return out


@functools.lru_cache(maxsize=64)
def _job_layout(keys: tuple[str, ...]) -> tuple[operator.itemgetter, int | None]:
    """Where a result set's columns (its column names, in order) hold Job's fields, and acct_sources: found
    once per column list (a function of the schema, never of the data), not once per query."""
    return (operator.itemgetter(*(keys.index(f) for f in _JOB_FIELDS)),
            keys.index("acct_sources") if "acct_sources" in keys else None)


def _spec_json(spec: JobSpec) -> str:
    return "{}" if spec is NO_SPEC else json.dumps(spec.to_dict(), ensure_ascii=False)


def _accounting(r: sqlite3.Row, keys) -> Accounting:
    return Accounting(**{k: r[c] for k, c in zip(ACCOUNTING_FIELDS, _ACCT_COLUMNS)},
                      sources=json.loads(r["acct_sources"]), extra=json.loads(r["acct_extra"] or "{}"))


def row_to_usage(r: sqlite3.Row) -> JobUsage:
    return JobUsage(job_id=r["job_id"], at=r["at"], nodes=tuple(json.loads(r["nodes"])), cpu_seconds=r["cpu_seconds"],
                    cpu_percent=r["cpu_percent"], rss_bytes=r["rss_bytes"], max_rss_bytes=r["max_rss_bytes"],
                    pids=r["pids"], samples=r["samples"], stride=r["stride"])


def row_to_job(r: sqlite3.Row) -> Job:
    return rows_to_jobs([r])[0]


def _bool(v) -> bool | None:
    return None if v is None else bool(v)


def row_to_queue(r: sqlite3.Row) -> Queue:
    return Queue(id=r["id"], name=r["name"], type=r["type"], master_node_id=r["master_node_id"],
                 weight=r["weight"], position=r["position"], reachable=_bool(r["reachable"]),
                 last_error=r["last_error"], usage=r["usage"], unreachable_since=r["unreachable_since"])


def row_to_node(r: sqlite3.Row) -> Node:
    load = (r["load1"], r["load5"], r["load15"]) if r["load1"] is not None else None
    return Node(id=r["id"], address=r["address"], port=r["port"], position=r["position"],
                is_master=(r["position"] == 0), reachable=_bool(r["reachable"]), last_seen=r["last_seen"],
                last_error=r["last_error"], load=load, ncpus=r["ncpus"],
                enforcement=json.loads(r["enforcement"]) if r["enforcement"] else {}, transport=r["transport"],
                metrics=json.loads(r["metrics"]) if r["metrics"] else {})


def _token(r: sqlite3.Row | None) -> Token | None:
    return Token(**{k: r[k] for k in r.keys() if k in _TOKEN_FIELDS}) if r else None


_TOKEN_FIELDS = {f.name for f in dataclasses.fields(Token)}


class Repository:
    def __init__(self, db: Database):
        self.db = db
        self.q = db.q

    def _one(self, sql: str, **params):
        return self.db.conn.execute(sql, params).fetchone()

    def _all(self, sql: str, **params):
        return self.db.conn.execute(sql, params).fetchall()

    # -- jobs (state changes only through metasched.lifecycle) -----------------------------------
    def insert_job(self, *, name, queue_id, owner, status, path, options, pwd, token, now,
                   spec: JobSpec = NO_SPEC, array_spec=None, depends_on=()) -> Job:
        return row_to_job(self._one(self.q.insert_job, name=name, queue_id=queue_id, owner=owner,
                                    status=status.value, path=path, options=json.dumps(list(options)),
                                    pwd=pwd, token=token, now=now, spec=_spec_json(spec), array_spec=array_spec,
                                    depends_on=depends_to_json(depends_on)))

    def get_job(self, job_id: int) -> Job | None:
        r = self._one(self.q.get_job, id=job_id)
        return row_to_job(r) if r else None

    def list_jobs(self, *, after: int, limit: int, owner=None, queue_id=None, statuses=None) -> list[Job]:
        params = dict(after=after, limit=limit, queue_id=queue_id,
                      statuses=json.dumps([s.value for s in statuses]) if statuses else None)
        if owner is not None:
            return rows_to_jobs(self._all(self.q.list_jobs_of_owner, owner=owner, **params))
        return rows_to_jobs(self._all(self.q.list_jobs, owner=None, **params))

    def list_jobs_newest(self, *, before: int | None, limit: int, owner=None, queue_id=None,
                         statuses=None) -> list[Job]:
        params = dict(before=before, limit=limit, queue_id=queue_id,
                      statuses=json.dumps([s.value for s in statuses]) if statuses else None)
        if owner is not None:
            return rows_to_jobs(self._all(self.q.list_jobs_of_owner_newest, owner=owner, **params))
        return rows_to_jobs(self._all(self.q.list_jobs_newest, owner=None, **params))

    def update_job_fields(self, *, id, version, name, queue_id, path, options, pwd, now,
                          spec: JobSpec = NO_SPEC, depends_on=()) -> Job | None:
        r = self._one(self.q.update_job_fields, id=id, version=version, name=name, queue_id=queue_id, path=path,
                      options=json.dumps(list(options)), pwd=pwd, now=now, spec=_spec_json(spec),
                      depends_on=depends_to_json(depends_on))
        return row_to_job(r) if r else None

    def update_job(self, *, id, version, status, reason, now, scheduler_job_id=None, exit_code=None,
                   started_at=None, attempt=0) -> Job | None:
        r = self._one(self.q.update_job, id=id, version=version, status=status.value, reason=reason, now=now,
                      scheduler_job_id=scheduler_job_id, exit_code=exit_code, started_at=started_at,
                      attempt=attempt)
        return row_to_job(r) if r else None

    def request_cancel(self, *, id, version, now) -> Job | None:
        r = self._one(self.q.request_cancel, id=id, version=version, now=now)
        return row_to_job(r) if r else None

    def cancel_requested_among(self, ids: list[int]) -> set[int]:
        return {r["id"] for r in self._all(self.q.cancel_requested_among, ids=json.dumps(list(ids)))}

    def note_job(self, *, id, version, reason) -> bool:
        return self.db.conn.execute(self.q.note_job, dict(id=id, version=version, reason=reason)).rowcount == 1

    def insert_job_event(self, *, job_id, old_status, new_status, actor, reason, now, task=None) -> None:
        self.db.conn.execute(self.q.insert_job_event, dict(
            job_id=job_id, old_status=old_status.value if old_status else None, new_status=new_status.value,
            actor=actor, reason=reason, now=now, task=task))

    def list_job_events(self, job_id: int, task: int | None = None) -> list[JobEvent]:
        return [JobEvent(r["id"], job_id, r["at"], r["old_status"], r["new_status"], r["actor"], r["reason"],
                         r["task"])
                for r in self._all(self.q.list_job_events, job_id=job_id, task=task)]

    def count_jobs_by_queue_status(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for r in self._all(self.q.count_jobs_by_queue_status):
            out.setdefault(r["queue_id"], {})[r["status"]] = r["n"]
        return out

    def list_jobs_in_states(self, statuses) -> list[Job]:
        return rows_to_jobs(self._all(self.q.list_jobs_in_states, statuses=json.dumps([s.value for s in statuses])))

    def latest_job_change(self) -> tuple[str, int]:
        r = self._one(self.q.latest_job_change)
        return r["at"], r["n"]

    def prune_finished_jobs(self, *, before: str, limit: int) -> int:
        return self.db.conn.execute(self.q.prune_finished_jobs, dict(before=before, limit=limit)).rowcount

    # -- queues and nodes ---------------------------------------------------------------------
    def get_queue_by_name(self, name: str) -> Queue | None:
        r = self._one(self.q.get_queue_by_name, name=name)
        return row_to_queue(r) if r else None

    def insert_queue(self, **kw) -> Queue:
        return row_to_queue(self._one(self.q.insert_queue, **kw))

    def update_queue_config(self, **kw) -> None:
        self.db.conn.execute(self.q.update_queue_config, kw)

    def unlist_queues(self, keep: list[int]) -> None:
        self.db.conn.execute(self.q.unlist_queues, dict(keep=json.dumps(keep)))

    def list_queues(self) -> list[Queue]:
        """The configured queues, in the config's order."""
        return [row_to_queue(r) for r in self._all(self.q.list_queues)]

    def get_queue(self, queue_id: int) -> Queue | None:
        r = self._one(self.q.get_queue, id=queue_id)
        return row_to_queue(r) if r else None

    def set_queue_health(self, *, id, reachable, last_error, now) -> None:
        self.db.conn.execute(self.q.set_queue_health, dict(id=id, reachable=reachable, last_error=last_error, now=now))

    def set_queue_usage(self, *, id, usage) -> None:
        self.db.conn.execute(self.q.set_queue_usage, dict(id=id, usage=usage))

    def get_node_by_address(self, address: str, port: int) -> Node | None:
        r = self._one(self.q.get_node_by_address, address=address, port=port)
        return row_to_node(r) if r else None

    def insert_node(self, **kw) -> Node:
        return row_to_node(self._one(self.q.insert_node, **kw))

    def update_node_config(self, **kw) -> None:
        self.db.conn.execute(self.q.update_node_config, kw)

    def unlist_nodes(self, keep: list[int]) -> None:
        self.db.conn.execute(self.q.unlist_nodes, dict(keep=json.dumps(keep)))

    def list_nodes(self) -> list[Node]:
        """The configured nodes, in the config's order (the first is the master)."""
        return [row_to_node(r) for r in self._all(self.q.list_nodes)]

    def get_node(self, node_id: int) -> Node | None:
        r = self._one(self.q.get_node, id=node_id)
        return row_to_node(r) if r else None

    def set_node_health(self, *, id, reachable, last_seen, last_error, now, load=None, ncpus=None,
                        enforcement=None) -> None:
        load = load or (None, None, None)
        self.db.conn.execute(self.q.set_node_health, dict(
            id=id, reachable=reachable, last_seen=last_seen, last_error=last_error, now=now,
            load1=load[0], load5=load[1], load15=load[2], ncpus=ncpus,
            enforcement=json.dumps(enforcement) if enforcement is not None else None))

    # -- settings and cluster events ----------------------------------------------------------
    def get_setting(self, key: str) -> Setting | None:
        r = self._one(self.q.get_setting, key=key)
        return Setting(key, json.loads(r["value"]), r["updated_at"], r["updated_by"]) if r else None

    def put_setting(self, *, key, value, actor, now) -> None:
        self.db.conn.execute(self.q.put_setting, dict(key=key, value=json.dumps(value), actor=actor, now=now))

    def insert_cluster_event(self, *, kind, detail, actor, now) -> None:
        self.db.conn.execute(self.q.insert_cluster_event, dict(kind=kind, detail=json.dumps(detail),
                                                               actor=actor, now=now))

    def prune_cluster_events(self, *, before: str, limit: int) -> int:
        return self.db.conn.execute(self.q.prune_cluster_events, dict(before=before, limit=limit)).rowcount

    def list_cluster_events(self, kind: str, limit: int = 20) -> list[ClusterEvent]:
        return [ClusterEvent(r["id"], r["at"], r["actor"], r["kind"], json.loads(r["detail"]))
                for r in self._all(self.q.list_cluster_events, kind=kind, limit=limit)]

    # -- events out (sql/events.sql) -----------------------------------------------------------
    def latest_event_id(self) -> int:
        return self._one(self.q.latest_event_id)["id"]

    def event_feed(self, *, after: int, limit: int, owner: str | None = None) -> list[FeedEvent]:
        return [_feed_event(r) for r in self._all(self.q.event_feed, after=after, limit=limit, owner=owner)]

    def job_event_ids(self, job_id: int) -> dict[int, int]:
        """job_events.id -> events.id (the id clients and receivers see) for one job."""
        return {r["ref_id"]: r["id"] for r in self._all(self.q.job_event_ids, job_id=job_id)}

    def insert_job_notify(self, n: JobNotify) -> None:
        self.db.conn.execute(self.q.insert_job_notify, dict(job_id=n.job_id, on_what=json.dumps(list(n.on)),
                                                            email=n.email, webhook=n.webhook, secret=n.secret))

    def get_job_notify(self, job_id: int) -> JobNotify | None:
        r = self._one(self.q.get_job_notify, job_id=job_id)
        return _notify(r) if r else None

    def job_notify_among(self, ids) -> dict[int, JobNotify]:
        return {r["job_id"]: _notify(r) for r in self._all(self.q.job_notify_among, ids=json.dumps(list(ids)))}

    def insert_delivery(self, *, event_id, job_id, channel, hook, address, body: dict, now) -> None:
        self.db.conn.execute(self.q.insert_delivery, dict(event_id=event_id, job_id=job_id, channel=channel, hook=hook,
                                                          address=address, body=json.dumps(body), now=now))

    def due_deliveries(self, *, now: str, limit: int) -> list[Delivery]:
        return [_delivery(r) for r in self._all(self.q.due_deliveries, now=now, limit=limit)]

    def next_delivery_at(self) -> str | None:
        return self._one(self.q.next_delivery_at)["at"]

    def record_delivery(self, *, id, state, attempts, next_at, last_error, delivered_at) -> bool:
        return self.db.conn.execute(self.q.record_delivery, dict(
            id=id, state=state, attempts=attempts, next_at=next_at, last_error=last_error,
            delivered_at=delivered_at)).rowcount == 1

    def list_job_deliveries(self, job_id: int) -> list[Delivery]:
        return [_delivery(r) for r in self._all(self.q.list_job_deliveries, job_id=job_id)]

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        return {r["channel"]: {k: r[k] for k in ("delivered", "failed", "attempt_failures", "pending")}
                for r in self._all(self.q.delivery_counts)}

    # -- tokens -------------------------------------------------------------------------------
    def insert_token(self, **kw) -> Token:
        return _token(self._one(self.q.insert_token, **kw))

    def find_token(self, *, secret_hash, now) -> Token | None:
        """A token that authenticates now (neither revoked nor expired), by its secret's hash."""
        return _token(self._one(self.q.find_token, secret_hash=secret_hash, now=now))

    def touch_token(self, *, id, now, stale) -> None:
        self.db.conn.execute(self.q.touch_token, dict(id=id, now=now, stale=stale))

    def list_tokens(self, user: str | None) -> list[Token]:
        return [_token(r) for r in self._all(self.q.list_tokens, user=user)]

    def get_token(self, token_id: int) -> Token | None:
        return _token(self._one(self.q.get_token, id=token_id))

    def revoke_token(self, *, id, now) -> bool:
        return self.db.conn.execute(self.q.revoke_token, dict(id=id, now=now)).rowcount == 1

    # -- poller -------------------------------------------------------------------------------
    def get_lease(self) -> LeaseRecord | None:
        r = self._one(self.q.get_lease)
        return LeaseRecord(**{k: r[k] for k in r.keys() if k != "name"}) if r else None

    def write_lease(self, **kw) -> None:
        self.db.conn.execute(self.q.write_lease, kw)

    def release_lease(self, *, holder: str, now: str) -> None:
        self.db.conn.execute(self.q.release_lease, dict(holder=holder, now=now))

    def lease_epoch(self) -> tuple[str, int] | None:
        r = self._one(self.q.lease_epoch)
        return (r["holder"], r["epoch"]) if r else None

    def insert_poll_cycle(self, *, holder, started_at, duration_ms, summary, errors) -> None:
        self.db.conn.execute(self.q.insert_poll_cycle, dict(holder=holder, started_at=started_at,
                                                            duration_ms=duration_ms, summary=json.dumps(summary),
                                                            errors=json.dumps(errors)))

    def prune_poll_cycles(self, keep: int) -> None:
        self.db.conn.execute(self.q.prune_poll_cycles, dict(keep=keep))

    def last_poll_cycle(self) -> PollCycle | None:
        r = self._one(self.q.last_poll_cycle)
        if not r:
            return None
        return PollCycle(r["id"], r["holder"], r["started_at"], r["duration_ms"], json.loads(r["summary"]),
                         json.loads(r["errors"]))

    # -- metrics (sql/metrics.sql) --------------------------------------------------------------
    def metrics_dispatch_counts(self) -> dict[int, tuple[int, int]]:
        """queue id -> (dispatched, failed for good)."""
        return {r["queue_id"]: (r["dispatched"] or 0, r["failed"] or 0)
                for r in self._all(self.q.metrics_dispatch_counts)}

    def metrics_poll_cycle_stats(self) -> dict:
        return dict(self._one(self.q.metrics_poll_cycle_stats))

    # -- foreign jobs (sql/foreign.sql) ---------------------------------------------------------
    def upsert_foreign_job(self, *, queue_id, native_id, owner, name, state, native_queue, start_time,
                           now) -> None:
        self.db.conn.execute(self.q.upsert_foreign_job, dict(
            queue_id=queue_id, native_id=native_id, owner=owner, name=name, state=state,
            native_queue=native_queue, start_time=start_time, now=now))

    def delete_departed_foreign_jobs(self, *, queue_id, keep: list[str]) -> int:
        return self.db.conn.execute(self.q.delete_departed_foreign_jobs,
                                    dict(queue_id=queue_id, keep=json.dumps(keep))).rowcount

    def list_foreign_jobs(self, *, after: int, limit: int, owner=None, queue_id=None) -> list[ForeignJob]:
        params = dict(after=after, limit=limit, queue_id=queue_id)
        rows = (self._all(self.q.list_foreign_jobs_of_owner, owner=owner, **params) if owner is not None
                else self._all(self.q.list_foreign_jobs, owner=None, **params))
        return [ForeignJob(**dict(r)) for r in rows]

    def count_foreign_jobs_by_queue_state(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for r in self._all(self.q.count_foreign_jobs_by_queue_state):
            out.setdefault(r["queue_id"], {})[r["state"]] = r["n"]
        return out

    # -- what jobs used (sql/usage.sql, issue 15) -----------------------------------------------------
    def record_job_accounting(self, job_id: int, acct: Accounting) -> None:
        """Only metasched/lifecycle.py calls this, in the transaction that records the job's final state."""
        self.db.conn.execute(self.q.record_job_accounting, dict(
            id=job_id, **{k: getattr(acct, k) for k in ACCOUNTING_FIELDS},
            sources=json.dumps(acct.sources, sort_keys=True), extra=json.dumps(acct.extra, sort_keys=True)))

    def list_job_history(self, *, since: str, until: str, before: tuple[str, int], limit: int, owner=None,
                         queue_id=None, statuses=None) -> list[Job]:
        params = dict(since=since, until=until, before_at=before[0], before_id=before[1], limit=limit,
                      queue_id=queue_id, statuses=json.dumps([s.value for s in statuses]) if statuses else None)
        if owner is not None:
            return rows_to_jobs(self._all(self.q.list_job_history_of_owner, owner=owner, **params))
        return rows_to_jobs(self._all(self.q.list_job_history, **params))

    def usage_jobs(self, *, since: str, until: str, owner=None) -> list[dict]:
        """The finished jobs a usage report sums (plain dicts of the columns it needs)."""
        if owner is not None:
            rows = self._all(self.q.usage_jobs_of_owner, since=since, until=until, owner=owner)
        else:
            rows = self._all(self.q.usage_jobs, since=since, until=until)
        return [dict(r) for r in rows]

    def upsert_job_usages(self, rows: list[dict]) -> None:
        """One cycle's measurements (dicts of job_id, at, nodes, cpu_seconds, cpu_percent, rss_bytes, pids,
        sampled), in one executemany: with 200 running jobs a statement each cost the cycle 3 ms more."""
        self.db.conn.executemany(self.q.upsert_job_usage, [dict(r, nodes=json.dumps(list(r["nodes"])))
                                                           for r in rows])

    def upsert_job_usage(self, *, job_id, at, nodes, cpu_seconds, cpu_percent, rss_bytes, pids,
                         sampled: int = 0) -> JobUsage:
        self.upsert_job_usages([dict(job_id=job_id, at=at, nodes=nodes, cpu_seconds=cpu_seconds,
                                     cpu_percent=cpu_percent, rss_bytes=rss_bytes, pids=pids, sampled=sampled)])
        return self.get_job_usage(job_id)

    def get_job_usage(self, job_id: int) -> JobUsage | None:
        r = self._one(self.q.get_job_usage, job_id=job_id)
        return row_to_usage(r) if r else None

    def list_job_usage(self, ids) -> dict[int, JobUsage]:
        return {r["job_id"]: row_to_usage(r) for r in self._all(self.q.list_job_usage, ids=json.dumps(list(ids)))}

    def insert_job_samples(self, rows: list[dict]) -> None:
        """Samples (dicts of job_id, at, cpu_seconds, cpu_percent, rss_bytes, pids, nodes); the jobs' sample
        counts are kept by upsert_job_usages (sampled)."""
        self.db.conn.executemany(self.q.insert_job_sample, [dict(r, nodes=json.dumps(list(r["nodes"])))
                                                            for r in rows])

    def insert_job_sample(self, *, job_id, at, cpu_seconds, cpu_percent, rss_bytes, pids, nodes) -> None:
        self.insert_job_samples([dict(job_id=job_id, at=at, cpu_seconds=cpu_seconds, cpu_percent=cpu_percent,
                                      rss_bytes=rss_bytes, pids=pids, nodes=nodes)])

    def thin_job_samples(self, job_id: int) -> int:
        """Every other sample of the job removed, its stride doubled; how many were removed."""
        n = self.db.conn.execute(self.q.thin_job_samples, dict(job_id=job_id)).rowcount
        self.db.conn.execute(self.q.thinned_job_samples, dict(job_id=job_id))
        return n

    def list_job_samples(self, *, job_id, since: str, until: str, after: int, limit: int) -> list[tuple[int, JobSample]]:
        return [(r["id"], JobSample(at=r["at"], cpu_seconds=r["cpu_seconds"], cpu_percent=r["cpu_percent"],
                                    rss_bytes=r["rss_bytes"], pids=r["pids"], nodes=tuple(json.loads(r["nodes"]))))
                for r in self._all(self.q.list_job_samples, job_id=job_id, since=since, until=until, after=after,
                                   limit=limit)]

    def prune_job_samples(self, *, before: str, limit: int) -> int:
        return self.db.conn.execute(self.q.prune_job_samples, dict(before=before, limit=limit)).rowcount

    def set_node_metrics(self, *, id, metrics: dict) -> None:
        self.db.conn.execute(self.q.set_node_metrics, dict(id=id, metrics=json.dumps(metrics, sort_keys=True)))

    def insert_node_sample(self, *, node_id, at, cpu_percent, memory_percent, disk_percent, load1, jobs) -> None:
        self.db.conn.execute(self.q.insert_node_sample, dict(
            node_id=node_id, at=at, cpu_percent=cpu_percent, memory_percent=memory_percent,
            disk_percent=disk_percent, load1=load1, jobs=jobs))

    def list_node_samples(self, *, node_id, since: str, until: str, after: int, limit: int) -> list[dict]:
        return [dict(r) for r in self._all(self.q.list_node_samples, node_id=node_id, since=since, until=until,
                                           after=after, limit=limit)]

    def prune_node_samples(self, *, before: str, limit: int) -> int:
        return self.db.conn.execute(self.q.prune_node_samples, dict(before=before, limit=limit)).rowcount

    def add_share_sample(self, *, node_id, queue_id, bucket, seconds, cpu_seconds, target_seconds) -> None:
        self.add_share_samples([dict(node_id=node_id, queue_id=queue_id, bucket=bucket, seconds=seconds,
                                     cpu_seconds=cpu_seconds, target_seconds=target_seconds)])

    def add_share_samples(self, rows: list[dict]) -> None:
        self.db.conn.executemany(self.q.add_share_sample, rows)

    def share_totals(self, *, since: str, until: str) -> list[ShareSample]:
        return [ShareSample(r["node_id"], r["queue_id"], r["seconds"], r["cpu_seconds"], r["target_seconds"])
                for r in self._all(self.q.share_totals, since=since, until=until)]

    def prune_share_samples(self, *, before: str, limit: int) -> int:
        return self.db.conn.execute(self.q.prune_share_samples, dict(before=before, limit=limit)).rowcount

    def add_queue_cpu(self, *, queue_id, cpu_seconds) -> None:
        self.db.conn.execute(self.q.add_queue_cpu, dict(queue_id=queue_id, cpu_seconds=cpu_seconds))

    def queue_cpu_totals(self) -> dict[int, float]:
        return {r["queue_id"]: r["cpu_seconds"] for r in self._all(self.q.queue_cpu_totals)}

    # -- workflows: array tasks, dependencies (sql/workflows.sql) ---------------------------------
    def insert_array_task(self, *, job_id: int, tasks, status: JobStatus, now: str) -> None:
        """Every task of a new array (one executemany)."""
        self.db.conn.executemany(self.q.insert_array_task,
                                 [dict(job_id=job_id, task=t, status=status.value, now=now) for t in tasks])

    def get_array_task(self, job_id: int, task: int) -> ArrayTask | None:
        r = self._one(self.q.get_array_task, job_id=job_id, task=task)
        return _task(r) if r else None

    def list_array_tasks(self, *, job_id: int, after: int, limit: int, statuses=None) -> list[ArrayTask]:
        return [_task(r) for r in self._all(self.q.list_array_tasks, job_id=job_id, after=after, limit=limit,
                                            statuses=json.dumps([s.value for s in statuses]) if statuses else None)]

    def list_open_array_tasks(self, job_ids: list[int]) -> list[ArrayTask]:
        return [_task(r) for r in self._all(self.q.list_open_array_tasks, job_ids=json.dumps(list(job_ids)))]

    def count_array_tasks(self, job_ids: list[int]) -> dict[int, dict[str, int]]:
        """job id -> state -> tasks."""
        out: dict[int, dict[str, int]] = {}
        for r in self._all(self.q.count_array_tasks, job_ids=json.dumps(list(job_ids))):
            out.setdefault(r["job_id"], {})[r["status"]] = r["n"]
        return out

    def update_array_task(self, *, job_id, task, version, status: JobStatus, reason, now, native_id=None,
                          exit_code=None, started_at=None, cancel_requested=0) -> ArrayTask | None:
        r = self._one(self.q.update_array_task, job_id=job_id, task=task, version=version, status=status.value,
                      reason=reason, now=now, native_id=native_id, exit_code=exit_code, started_at=started_at,
                      cancel_requested=int(cancel_requested))
        return _task(r) if r else None

    def request_array_task_cancel(self, *, job_id, task, version, now) -> ArrayTask | None:
        r = self._one(self.q.request_array_task_cancel, job_id=job_id, task=task, version=version, now=now)
        return _task(r) if r else None

    def move_array_tasks(self, *, job_id: int, from_states, status: JobStatus, reason: str, now: str) -> int:
        return self.db.conn.execute(self.q.move_array_tasks, {
            "job_id": job_id, "from": json.dumps([s.value for s in from_states]), "status": status.value,
            "reason": reason, "now": now}).rowcount

    def set_array_spec(self, *, id: int, version: int, array_spec: str, now: str) -> Job | None:
        r = self._one(self.q.set_array_spec, id=id, version=version, array_spec=array_spec, now=now)
        return row_to_job(r) if r else None

    def array_task_ends(self, job_id: int) -> dict:
        """ended, failed, errors, max_exit, first_failed (see sql/workflows.sql)."""
        r = self._one(self.q.array_task_ends, job_id=job_id)
        return {k: r[k] for k in r.keys()}

    def dependency_targets(self, ids) -> dict[int, dict]:
        """job id -> {owner, status, started_at, array_spec, failed_tasks} of these jobs (those that exist)."""
        return {r["id"]: {k: r[k] for k in r.keys() if k != "id"}
                for r in self._all(self.q.dependency_targets, ids=json.dumps(sorted(set(ids))))}

    def dependency_task_targets(self, pairs) -> dict[tuple[int, int], dict]:
        """(job id, task) -> {status, started_at} of these tasks (those that exist)."""
        return {(r["job_id"], r["task"]): {"status": r["status"], "started_at": r["started_at"]}
                for r in self._all(self.q.dependency_task_targets, pairs=json.dumps(sorted(set(pairs))))}

    def list_waiting_dependants(self) -> list[Job]:
        return rows_to_jobs(self._all(self.q.list_waiting_dependants))

    def list_queue_ahead(self, *, queue_id: int, id: int) -> list[tuple[int, str]]:
        return [(r["id"], r["owner"]) for r in self._all(self.q.list_queue_ahead, queue_id=queue_id, id=id)]

    def list_pending_jobs(self) -> list[dict]:
        """Every TO_BE_QUEUED job: id, queue_id, owner, name, depends_on (Dependency values), reason."""
        return [dict(id=r["id"], queue_id=r["queue_id"], owner=r["owner"], name=r["name"],
                     depends_on=depends_from_json(r["depends_on"]), reason=r["reason"])
                for r in self._all(self.q.list_pending_jobs)]


def _feed_event(r: sqlite3.Row) -> FeedEvent:
    return FeedEvent(id=r["id"], kind=r["kind"], at=r["at"] or "", actor=r["actor"] or "", job_id=r["job_id"],
                     owner=r["owner"], job_name=r["job_name"], queue_id=r["queue_id"], old_status=r["old_status"],
                     new_status=r["new_status"], reason=r["reason"], exit_code=r["exit_code"],
                     cluster_kind=r["cluster_kind"], detail=json.loads(r["detail"]) if r["detail"] else None)


def _notify(r: sqlite3.Row) -> JobNotify:
    return JobNotify(job_id=r["job_id"], on=tuple(json.loads(r["on_what"])), email=r["email"], webhook=r["webhook"],
                     secret=r["secret"])


def _delivery(r: sqlite3.Row) -> Delivery:
    return Delivery(id=r["id"], event_id=r["event_id"], job_id=r["job_id"], channel=r["channel"], hook=r["hook"],
                    address=r["address"], body=json.loads(r["body"]), state=r["state"], attempts=r["attempts"],
                    created_at=r["created_at"], next_at=r["next_at"], last_error=r["last_error"],
                    delivered_at=r["delivered_at"], secret=r["secret"])


def _task(r: sqlite3.Row) -> ArrayTask:
    return ArrayTask(job_id=r["job_id"], task=r["task"], status=_STATUS_OF[r["status"]], native_id=r["native_id"],
                     exit_code=r["exit_code"], reason=r["reason"], cancel_requested=bool(r["cancel_requested"]),
                     started_at=r["started_at"], finished_at=r["finished_at"], updated_at=r["updated_at"],
                     version=r["version"])
