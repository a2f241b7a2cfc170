"""What jobs used, through the API (issue 15): accounting in GET /jobs/{id}, live measurements
(include=metrics, /jobs/{id}/metrics, node figures), history (GET /jobs?since=&until=, newest end first) and
the usage report (GET /usage), whose sums are the history's; a user never sees another user's rows."""
from __future__ import annotations

import urllib.parse

import pytest

from metasched import lifecycle
from metasched.model import Accounting, JobStatus

DAY = "2026-11-28"


def t(hms: str) -> str:
    return f"{DAY}T{hms}.000000Z"


@pytest.fixture
def make_job(services):
    repo = services.repo

    def make(owner="alice", status=JobStatus.COMPLETED, queue=1, created="10:00:00", started="10:00:10",
             finished="10:01:00", cpu=None, wall=None, rss=None, exit_code=0):
        with services.db.write():
            job = lifecycle.create(repo, name="j", queue_id=queue, owner=owner, status=JobStatus.TO_BE_QUEUED,
                                   path="/x", options=[], pwd="/", actor=owner, reason="submitted", now=t(created))
            job = lifecycle.transition(repo, job, JobStatus.DISPATCHING, actor="poller", reason="r", now=t(created))
            if started is not None:
                job = lifecycle.transition(repo, job, JobStatus.RUNNING, actor="poller", reason="r", now=t(started),
                                           scheduler_job_id=str(1000 + job.id))
            acct = Accounting.of("qacct", cpu_seconds=cpu, wall_seconds=wall, max_rss_bytes=rss) \
                if any(v is not None for v in (cpu, wall, rss)) else None
            return lifecycle.observed(repo, job, status, actor="poller", reason="ended", now=t(finished),
                                      exit_code=exit_code, accounting=acct)
    return make


def running(services, owner="alice"):
    repo = services.repo
    with services.db.write():
        job = lifecycle.create(repo, name="r", queue_id=1, owner=owner, status=JobStatus.TO_BE_QUEUED, path="/x",
                               options=[], pwd="/", actor=owner, reason="submitted", now=t("09:00:00"))
        job = lifecycle.transition(repo, job, JobStatus.DISPATCHING, actor="poller", reason="r", now=t("09:00:00"))
        return lifecycle.transition(repo, job, JobStatus.RUNNING, actor="poller", reason="r", now=t("09:00:01"),
                                    scheduler_job_id="77")


# -- accounting and live measurements of one job ---------------------------------------------------

def test_a_finished_job_shows_what_it_used_and_where_each_number_came_from(alice, make_job):
    job = make_job(cpu=2.0, wall=8.0, rss=200 << 20)
    body = alice.get(f"/jobs/{job.id}").json
    assert body["accounting"]["cpu_seconds"] == 2.0 and body["accounting"]["max_rss_bytes"] == 200 << 20
    assert body["accounting"]["start_time"] is None           # not reported: null, never filled in
    assert body["accounting"]["sources"] == {"cpu_seconds": "qacct", "wall_seconds": "qacct",
                                             "max_rss_bytes": "qacct"}
    assert body["links"]["metrics"] == f"/jobs/{job.id}/metrics"
    assert "metrics" not in body


def test_live_measurements_with_include_and_over_time(alice, bob, root, anon, services):
    job = running(services)
    assert alice.get(f"/jobs/{job.id}?include=metrics").json["metrics"] is None
    with services.db.write():
        for i, (cpu, rss) in enumerate([(0.5, 100), (1.5, 300), (2.0, 200)]):
            services.repo.upsert_job_usage(job_id=job.id, at=t(f"09:00:0{2 + i}"), nodes=["10.0.0.1"], cpu_seconds=cpu,
                                           cpu_percent=50.0 if i else None, rss_bytes=rss, pids=2, sampled=1)
            services.repo.insert_job_sample(job_id=job.id, at=t(f"09:00:0{2 + i}"), cpu_seconds=cpu,
                                            cpu_percent=50.0 if i else None, rss_bytes=rss, pids=2,
                                            nodes=["10.0.0.1"])
    shown = alice.get(f"/jobs/{job.id}?include=metrics").json
    live = shown["metrics"]
    assert (live["cpu_seconds"], live["rss_bytes"], live["max_rss_bytes"], live["samples"]) == (2.0, 200, 300, 3)
    assert "outputs" in shown and "env" in shown            # still the job's detail (issue 14), with its metrics
    assert "metrics" not in alice.get(f"/jobs/{job.id}").json
    listed = alice.get("/jobs?include=metrics&status=RUNNING").json["items"]
    assert [j["metrics"]["cpu_seconds"] for j in listed] == [2.0]
    page = alice.get(f"/jobs/{job.id}/metrics?limit=2").json
    assert [s["cpu_seconds"] for s in page["items"]] == [0.5, 1.5]
    assert page["latest"]["max_rss_bytes"] == 300 and page["sample_interval_seconds"] == 30
    rest = alice.get(page["next"]).json
    assert [s["rss_bytes"] for s in rest["items"]] == [200] and rest["next"] is None
    window = alice.get(f"/jobs/{job.id}/metrics?since={DAY}T09:00:03Z&until={DAY}T09:00:04Z").json
    assert [s["cpu_seconds"] for s in window["items"]] == [1.5]
    # another user's job is not found; no identity is 401; root sees it
    assert bob.get(f"/jobs/{job.id}/metrics", status=404).json["status"] == 404
    assert bob.get(f"/jobs/{job.id}?include=metrics", status=404).json["status"] == 404
    anon.get(f"/jobs/{job.id}/metrics", status=401)
    assert len(root.get(f"/jobs/{job.id}/metrics").json["items"]) == 3


@pytest.mark.parametrize("query, field", [
    ("include=everything", "include"), ("since=yesterday", "since"), ("until=2026-13-45", "until"),
    ("since=%FF%FE", "since"), ("limit=0", "limit"), ("bogus=1", None),
])
def test_bad_parameters_of_the_metrics_routes_are_400_naming_the_field(alice, services, query, field):
    job = running(services)
    path = f"/jobs/{job.id}?{query}" if query.startswith("include") else f"/jobs/{job.id}/metrics?{query}"
    body = alice.get(path, status=400).json
    assert body.get("field", (body.get("fields") or [None])[0]) == (field or "bogus")


def test_node_figures_latest_and_over_time(alice, services):
    with services.db.write():
        services.repo.set_node_metrics(id=1, metrics={"at": t("09:00:00"), "cpu_percent": 12.5, "memory_percent": 40.0,
                                                      "disk_percent": 71.0, "disks": [], "load": [0.5, 0.4, 0.3],
                                                      "jobs": 3, "ncpus": 2, "memory_total_bytes": 100,
                                                      "memory_available_bytes": 60})
        for i in range(3):
            services.repo.insert_node_sample(node_id=1, at=t(f"09:0{i}:00"), cpu_percent=10.0 * i, memory_percent=40.0,
                                             disk_percent=71.0, load1=0.5, jobs=3)
    node = alice.get("/cluster/nodes/1").json
    assert node["metrics"]["cpu_percent"] == 12.5 and node["metrics"]["disk_percent"] == 71.0
    assert alice.get("/cluster/nodes/2").json["metrics"] is None
    samples = alice.get("/cluster/nodes/1/metrics?limit=2").json
    assert [s["cpu_percent"] for s in samples["items"]] == [0.0, 10.0] and samples["next"]
    assert samples["latest"]["memory_percent"] == 40.0
    alice.get("/cluster/nodes/99/metrics", status=404)


# -- history ----------------------------------------------------------------------------------------

@pytest.fixture
def history(make_job):
    """Eight finished jobs of alice and bob in two queues, ending one minute apart."""
    jobs = [make_job(owner="alice", finished="10:01:00", cpu=10, wall=60),
            make_job(owner="alice", status=JobStatus.ERROR, finished="10:02:00", cpu=20, wall=100, exit_code=3),
            make_job(owner="bob", finished="10:03:00", cpu=40, wall=120, queue=2),
            make_job(owner="alice", finished="10:04:00", queue=2, wall=30),                    # no cpu reported
            make_job(owner="alice", status=JobStatus.CANCELLED, started=None, finished="10:05:00"),  # never ran
            make_job(owner="bob", status=JobStatus.ERROR, finished="10:06:00", cpu=5, wall=5, exit_code=1),
            make_job(owner="alice", finished="10:07:00", created="10:05:00", started="10:06:30", cpu=1, wall=30),
            make_job(owner="alice", finished="11:00:00", cpu=99, wall=99)]
    return jobs


def ids(page):
    return [j["id"] for j in page["items"]]


def test_history_is_the_jobs_that_ended_in_the_window_newest_first(alice, history):
    page = alice.get(f"/jobs?since={DAY}T10:00:00Z&until={DAY}T10:30:00Z").json
    mine = [j for j in history if j.owner == "alice" and j.finished_at < t("10:30:00")]
    assert ids(page) == [j.id for j in sorted(mine, key=lambda j: j.finished_at, reverse=True)]
    assert all(j["finished_at"] >= t("10:00:00") for j in page["items"])
    errors = alice.get(f"/jobs?since={DAY}&status=ERROR").json
    assert [j["exit_code"] for j in errors["items"]] == [3]
    assert ids(alice.get(f"/jobs?since={DAY}&queue=2").json) == [history[3].id]


def test_history_pages_newest_first_without_gaps_or_repeats(alice, history):
    seen, url = [], f"/jobs?since={DAY}&limit=2"
    while url:
        page = alice.get(url).json
        seen += ids(page)
        url = page["next"]
        assert url is None or "before=" in urllib.parse.unquote(url)
    mine = sorted((j for j in history if j.owner == "alice"), key=lambda j: j.finished_at, reverse=True)
    assert seen == [j.id for j in mine]


def test_history_and_the_newest_first_listing_are_told_apart_by_since_and_until(alice, history):
    """GET /jobs?order=newest pages by id with before=<id> (issue 14); since or until make it the history, whose
    before is <finished_at>,<id> (issue 15): the two cursors never mix."""
    newest = alice.get("/jobs?order=newest&limit=3").json
    mine = sorted((j.id for j in history if j.owner == "alice"), reverse=True)
    assert ids(newest) == mine[:3] and "before=" in newest["next"]
    assert ids(alice.get(newest["next"]).json)[:1] == mine[3:4]
    by_end = alice.get(f"/jobs?since={DAY}&order=newest&limit=1").json
    assert ids(by_end) == [max((j for j in history if j.owner == "alice"), key=lambda j: j.finished_at).id]
    assert "," in urllib.parse.unquote(by_end["next"])


def test_history_never_shows_another_users_jobs(alice, bob, root, history):
    assert {j["owner"] for j in bob.get(f"/jobs?since={DAY}").json["items"]} == {"bob"}
    assert {j["owner"] for j in root.get(f"/jobs?since={DAY}").json["items"]} == {"alice", "bob"}
    assert alice.get(f"/jobs?since={DAY}&owner=bob", status=403).json["status"] == 403


@pytest.mark.parametrize("query, field", [
    (f"since={DAY}&after=3", "after"), ("before=nope", "before"), (f"before={DAY}T10:00:00.000000Z,x", "before"),
    (f"since={DAY}&before=12", "before"), (f"since={DAY}&order=oldest", "order"),
    (f"order=newest&before={DAY}T10:00:00.000000Z,3", "before"),
    ("until=%C3%28", "until"), ("since=2026-11-28T25:00:00Z", "since"),
])
def test_bad_history_parameters_are_400_naming_the_field(alice, query, field):
    assert alice.get(f"/jobs?{query}", status=400).json["field"] == field


# -- usage --------------------------------------------------------------------------------------

def usage(client, query=""):
    return client.get(f"/usage?since={DAY}T10:00:00Z&until={DAY}T10:30:00Z{query}").json


def test_usage_sums_are_the_historys(alice, history):
    rep = usage(alice)
    assert rep["owner"] == "alice" and [g["name"] for g in rep["groups"]] == ["alice"]
    listed = alice.get(f"/jobs?since={DAY}T10:00:00Z&until={DAY}T10:30:00Z&limit=1000").json["items"]
    g = rep["groups"][0]
    cpu = [j["accounting"]["cpu_seconds"] for j in listed if j["accounting"] and j["accounting"]["cpu_seconds"]]
    wall = [j["accounting"]["wall_seconds"] for j in listed if j["accounting"] and j["accounting"]["wall_seconds"]]
    assert g["jobs"] == len(listed) == 5
    assert g["cpu_hours"] * 3600 == pytest.approx(sum(cpu)) and g["cpu_jobs"] == len(cpu) == 3
    assert g["wall_hours"] * 3600 == pytest.approx(sum(wall)) and g["wall_jobs"] == len(wall) == 4
    assert (g["completed"], g["failed"], g["cancelled"]) == (3, 1, 1)
    assert g["failure_rate"] == pytest.approx(1 / 4)
    # waits (submit to start) of the four that started: 10 s, 10 s, 10 s and 90 s; nearest rank
    assert (g["wait_p50_seconds"], g["wait_p95_seconds"], g["waited_jobs"]) == (10.0, 90.0, 4)
    assert rep["total"]["jobs"] == g["jobs"]


def test_admins_see_everyones_usage_per_user_or_per_queue(root, alice, history):
    rep = usage(root)
    assert rep["owner"] is None and [g["name"] for g in rep["groups"]] == ["alice", "bob"]
    assert rep["total"]["jobs"] == 7 and rep["total"]["cpu_hours"] * 3600 == pytest.approx(10 + 20 + 40 + 5 + 1)
    per_queue = usage(root, "&group_by=queue")
    assert [(g["key"], g["name"], g["jobs"]) for g in per_queue["groups"]] == [("1", "SGE", 5), ("2", "Slurm", 2)]
    assert [g["jobs"] for g in usage(root, "&owner=bob")["groups"]] == [2]
    assert [g["jobs"] for g in usage(alice, "&group_by=queue")["groups"]] == [4, 1]   # her own, per queue


def test_a_user_never_gets_another_users_usage(alice, bob, history):
    assert alice.get("/usage?owner=bob", status=403).json["status"] == 403
    assert [g["name"] for g in usage(bob)["groups"]] == ["bob"]


def test_usage_shows_the_cpu_share_each_scheduler_had_next_to_its_target(alice, services):
    with services.db.write():
        for bucket, sge, slurm in ((t("10:00:00"), 70.0, 30.0), (t("10:05:00"), 60.0, 40.0)):
            services.repo.add_share_sample(node_id=1, queue_id=1, bucket=bucket, seconds=300, cpu_seconds=sge,
                                           target_seconds=70 * 300)
            services.repo.add_share_sample(node_id=1, queue_id=2, bucket=bucket, seconds=300, cpu_seconds=slurm,
                                           target_seconds=30 * 300)
        services.repo.add_share_sample(node_id=1, queue_id=1, bucket=t("11:00:00"), seconds=300, cpu_seconds=999,
                                       target_seconds=0)
    shares = {s["queue"]: s for s in usage(alice)["shares"]}
    assert shares["SGE"]["measured_share"] == 65.0 and shares["SGE"]["target_share"] == 70.0
    assert shares["Slurm"]["measured_share"] == 35.0 and shares["Slurm"]["cpu_seconds"] == 70.0
    assert shares["SGE"]["measured_seconds"] == 600 and shares["SGE"]["node"] == "127.0.0.1:22"
    # a window inside one bucket (metrics.share_bucket_seconds, 300 s here) shows that whole bucket
    inside = alice.get(f"/usage?since={DAY}T10:06:00Z&until={DAY}T10:07:00Z").json["shares"]
    assert {s["queue"]: s["measured_share"] for s in inside} == {"SGE": 60.0, "Slurm": 40.0}


@pytest.mark.parametrize("query, field", [
    ("group_by=owner", "group_by"), ("since=last+week", "since"), (f"since={DAY}T11:00:00Z&until={DAY}", "since"),
    ("since=%FF", "since"),
])
def test_bad_usage_parameters_are_400_naming_the_field(alice, query, field):
    assert alice.get(f"/usage?{query}", status=400).json["field"] == field


def test_usage_defaults_to_the_last_day(alice, anon):
    rep = alice.get("/usage").json
    assert rep["since"] < rep["until"] and rep["group_by"] == "user"
    anon.get("/usage", status=401)
