"""engine/measure.py (issue 15): agents' answers to rows. Rates and spans on the nodes' boot clock (a wall-clock
step changes nothing, a reboot starts afresh), a new lease holder counts nothing twice, samples downsampled and
bounded, per-job isolation of what cannot be matched."""
from __future__ import annotations

import pytest

from metasched import config as cfgmod
from metasched import lifecycle
from metasched.db.core import Database
from metasched.db.repository import Repository
from metasched.engine import measure
from metasched.engine.lease import Identity, Lease
from metasched.engine.observe import NodeObservation
from metasched.engine.values import CycleReport, Tick
from metasched.enforcement import AgentReport, group_name
from metasched.identity import Authority
from metasched.model import JobStatus
from metasched.services import Services

RAW = {"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
       "schedulers": [{"name": "SGE", "master": 0, "weight": 70}, {"name": "Slurm", "master": 0, "weight": 30}],
       "metrics": {"job_sample_interval": 10, "max_samples_per_job": 4, "node_sample_interval": 60,
                   "share_bucket_seconds": 300}}


@pytest.fixture
def env(tmp_path):
    db = Database(str(tmp_path / "db.sqlite3"))
    db.migrate()
    cfg = cfgmod.parse(RAW)
    Services(db, cfg, Authority(cfg.auth, service_uid=999999)).sync_config()
    repo = Repository(db)
    lease = Lease(db, Identity.of_this_process("t"), 30)
    assert lease.acquire()
    with db.read():
        queues, nodes = repo.list_queues(), repo.list_nodes()
    jobs = []
    with db.write():
        for native in ("41", "42"):
            j = lifecycle.create(repo, name="j", queue_id=queues[0].id, owner="alice", status=JobStatus.TO_BE_QUEUED,
                                 path="/x", options=[], pwd="/", actor="alice", reason="s", now="t")
            j = lifecycle.transition(repo, j, JobStatus.DISPATCHING, actor="poller", reason="r", now="t")
            jobs.append(lifecycle.transition(repo, j, JobStatus.RUNNING, actor="poller", reason="r", now="t",
                                             scheduler_job_id=native))
    yield dict(db=db, repo=repo, cfg=cfg, lease=lease, queues=queues, nodes=nodes, jobs=jobs)
    db.close()


def answer(node, uptime, jobs=None, usage=None, ticks=None, ok=True):
    """A NodeObservation as observe() builds it from an agent's answer."""
    sge, slurm = "q1-sge-SGE", "q2-slurm-Slurm"
    rep = AgentReport(ok, uptime=uptime, load=(0.5, 0.4, 0.3), ncpus=2,
                      usage_usec=usage if usage is not None else {sge: 0, slurm: 0},
                      jobs={sge: jobs or {}}, node=None if ticks is None else {
                          "cpu_ticks": ticks, "memory": {"total": 1000, "available": 250},
                          "disks": [{"mount": "/", "size": 100, "used": 30, "avail": 70}]})
    return NodeObservation(node, ok, rep)


def fig(cpu_s, rss, pids=2):
    return {"cpu_usec": int(cpu_s * 1e6), "rss_bytes": rss, "pids": pids}


def cycle(env, meters, observations, wall, mono, shares=None):
    tick = Tick(wall=wall, mono=mono, iso=f"2026-11-28T10:{int(wall) // 60 % 60:02d}:{int(wall) % 60:02d}.000000Z")
    report = CycleReport(started_at=tick.iso)
    with env["lease"].fenced():         # as Engine.record_observation calls it
        measure.record(env["repo"], meters, observations, env["queues"], env["jobs"],
                       shares or {env["queues"][0].id: 70.0, env["queues"][1].id: 30.0}, tick, env["cfg"], report)
    return report


def usage(env, job):
    with env["db"].read():
        return env["repo"].get_job_usage(job.id)


def test_rates_come_from_the_nodes_boot_clock_and_a_wall_clock_step_changes_nothing(env):
    n1, j = env["nodes"][0], env["jobs"][0]
    meters = measure.Meters()
    cycle(env, meters, [answer(n1, 100.0, {"41": fig(1.0, 500)}, ticks=[1000, 800])], wall=1000, mono=1)
    assert usage(env, j).cpu_percent is None                 # nothing to compare with yet
    # the wall clock jumps an hour back; the node's boot clock moved 2 s, the job used 1 s of CPU
    cycle(env, meters, [answer(n1, 102.0, {"41": fig(2.0, 300)}, ticks=[1400, 1000])], wall=1000 - 3600, mono=3)
    u = usage(env, j)
    assert (u.cpu_seconds, u.cpu_percent, u.rss_bytes, u.max_rss_bytes, u.nodes) == (2.0, 50.0, 300, 500, ("10.0.0.1",))
    with env["db"].read():
        node = env["repo"].get_node(n1.id)
    assert node.metrics["cpu_percent"] == 50.0 and node.metrics["memory_percent"] == 75.0
    assert node.metrics["disks"][0]["used_percent"] == 30.0 and node.metrics["jobs"] == 1


def test_a_reboot_starts_afresh_instead_of_a_negative_rate(env):
    n1, j = env["nodes"][0], env["jobs"][0]
    meters = measure.Meters()
    cycle(env, meters, [answer(n1, 100.0, {"41": fig(5.0, 1)}, usage={"q1-sge-SGE": 9_000_000, "q2-slurm-Slurm": 0})],
          wall=0, mono=0)
    report = cycle(env, meters, [answer(n1, 3.0, {"41": fig(0.5, 1)}, usage={"q1-sge-SGE": 10, "q2-slurm-Slurm": 0})],
                   wall=10, mono=10)
    assert usage(env, j).cpu_percent is None and usage(env, j).cpu_seconds == 5.0   # the largest total seen
    with env["db"].read():
        assert env["repo"].queue_cpu_totals() == {}
    assert "samples" in report.summary


def test_a_job_on_two_nodes_is_summed(env):
    n1, n2, j = env["nodes"][0], env["nodes"][1], env["jobs"][1]
    meters = measure.Meters()
    for up, cpu in ((10.0, 1.0), (12.0, 2.0)):
        cycle(env, meters, [answer(n1, up, {"42": fig(cpu, 100)}), answer(n2, up + 50, {"42": fig(cpu, 50, 1)})],
              wall=up, mono=up)
    u = usage(env, j)
    assert (u.cpu_seconds, u.cpu_percent, u.rss_bytes, u.pids, u.nodes) == (4.0, 100.0, 150, 3, ("10.0.0.1", "10.0.0.2"))


def test_two_nodes_that_are_one_machine_count_its_jobs_and_cpu_once(env):
    n1, n2, j = env["nodes"][0], env["nodes"][1], env["jobs"][0]
    q1, q2 = env["queues"]
    meters = measure.Meters()
    for up, cpu in ((10.0, 1.0), (12.0, 3.0)):
        obs = [answer(n, up, {"41": fig(cpu, 100)}, usage={group_name(q1): int(cpu * 1e6), group_name(q2): 0},
                      ticks=[1, 1]) for n in (n1, n2)]
        for o in obs:
            o.agent.node["procs_id"] = "boot-1:pid:[4026531836]"
        cycle(env, meters, obs, wall=up, mono=up)
    u = usage(env, j)
    assert (u.cpu_seconds, u.rss_bytes, u.nodes) == (3.0, 100, ("10.0.0.1",))
    with env["db"].read():
        assert env["repo"].queue_cpu_totals() == pytest.approx({q1.id: 2.0})
        assert {t.node_id for t in env["repo"].share_totals(since="", until="9999")} == {n1.id, n2.id}


def test_figures_of_no_job_of_ours_and_unanswered_nodes_are_left_out(env):
    n1, n2 = env["nodes"]
    meters = measure.Meters()
    reading = measure.read([answer(n1, 1.0, {"999": fig(1, 1), "41": fig(1, 1)}), answer(n2, 1.0, {"42": fig(1, 1)},
                                                                                       ok=False)],
                           env["queues"], env["jobs"], {}, meters, "t")
    assert list(reading.jobs) == [env["jobs"][0].id] and reading.unmatched == 1


def test_samples_are_stored_at_most_every_interval_and_downsampled_beyond_the_cap(env):
    n1, j = env["nodes"][0], env["jobs"][0]
    meters = measure.Meters()
    for i in range(40):            # a cycle every 2 s for 80 s; samples every 10 s, at most 4 kept
        cycle(env, meters, [answer(n1, 100.0 + 2 * i, {"41": fig(i, 10 * i)})], wall=2 * i, mono=2 * i)
    with env["db"].read():
        samples = env["repo"].list_job_samples(job_id=j.id, since="", until="9999", after=0, limit=100)
        u = env["repo"].get_job_usage(j.id)
    assert 2 <= len(samples) < 4 and u.samples == len(samples) and u.stride >= 2
    times = [s.cpu_seconds for _, s in samples]
    assert times == sorted(times) and times[0] == 0               # the first sample stays, the rest spread out
    assert u.max_rss_bytes == 390 and u.cpu_seconds == 39.0       # the summary is exact whatever was thinned


def test_the_cpu_split_is_kept_per_node_scheduler_and_bucket_next_to_its_target(env):
    n1 = env["nodes"][0]
    q1, q2 = env["queues"]
    meters = measure.Meters()
    for up, a, b in ((100.0, 0, 0), (110.0, 7_000_000, 3_000_000), (120.0, 13_000_000, 7_000_000)):
        cycle(env, meters, [answer(n1, up, usage={group_name(q1): a, group_name(q2): b})], wall=1000 + up, mono=up)
    with env["db"].read():
        totals = {t.queue_id: t for t in env["repo"].share_totals(since="", until="9999")}
        counters = env["repo"].queue_cpu_totals()
    assert totals[q1.id].cpu_seconds == pytest.approx(13.0) and totals[q2.id].cpu_seconds == pytest.approx(7.0)
    assert totals[q1.id].seconds == pytest.approx(20.0)
    assert totals[q1.id].target_seconds / totals[q1.id].seconds == pytest.approx(70.0)
    assert counters == pytest.approx({q1.id: 13.0, q2.id: 7.0})


def test_a_new_lease_holder_counts_nothing_twice(env):
    n1 = env["nodes"][0]
    q1, q2 = env["queues"]
    cycle(env, measure.Meters(), [answer(n1, 100.0, usage={group_name(q1): 0, group_name(q2): 0})], wall=0, mono=0)
    cycle(env, measure.Meters(), [answer(n1, 110.0, usage={group_name(q1): 5_000_000, group_name(q2): 0})],
          wall=10, mono=10)          # another holder, its own meters: the first step it sees is its baseline
    with env["db"].read():
        assert env["repo"].queue_cpu_totals() == {}


def test_stale_holders_writes_are_fenced(env):
    from metasched.engine.lease import LeaseLost
    other = Lease(env["db"], Identity.of_this_process("other"), 30)
    env["db"].conn.execute("UPDATE poller_lease SET expires_mono = 0, expires_at = '2000-01-01T00:00:00.000000Z'")
    assert other.acquire()                          # took over: a higher epoch
    with pytest.raises(LeaseLost):
        cycle(env, measure.Meters(), [answer(env["nodes"][0], 1.0, {"41": fig(1, 1)})], wall=0, mono=0)
    assert usage(env, env["jobs"][0]) is None


def test_disabled_metrics_measure_nothing(env):
    env["cfg"] = cfgmod.parse(dict(RAW, metrics={"enabled": False}))
    report = cycle(env, measure.Meters(), [answer(env["nodes"][0], 1.0, {"41": fig(1, 1)})], wall=0, mono=0)
    assert usage(env, env["jobs"][0]) is None and "measured_jobs" not in report.summary


def test_a_failure_while_recording_costs_the_cycle_its_measurements_only(env, monkeypatch):
    n1 = env["nodes"][0]

    def broken(rows):
        if rows:                        # the second cycle has a step of the CPU split to store
            raise RuntimeError("disk full, say")
    monkeypatch.setattr(env["repo"], "add_share_samples", broken)
    meters = measure.Meters()
    with env["lease"].fenced():
        env["repo"].set_node_health(id=n1.id, reachable=1, last_seen="t", last_error=None, now="t")
        for up in (1.0, 2.0):
            report = CycleReport(started_at="t")
            measure.record(env["repo"], meters, [answer(n1, up, {"41": fig(up, 1)})], env["queues"], env["jobs"], {},
                           Tick(wall=up, mono=up, iso="t"), env["cfg"], report)
    assert "measurements not recorded" in report.errors["metrics"]
    with env["db"].read():
        assert env["repo"].get_node(n1.id).reachable is True        # the rest of the transaction stands
    assert usage(env, env["jobs"][0]).cpu_seconds == 1.0            # the second cycle's writes were undone
