"""The exact JSON of a job listing and of a job, byte for byte: same keys, same values, same order, the same
escapes. A pin for the serialization's speed-ups (issue 21's benchmark): a faster view or encoder must give
exactly these bytes."""
from __future__ import annotations

import pytest

from .test_job_spec import SPEC_CONFIG

NOW = "2026-01-02T03:04:05Z"


@pytest.fixture
def services(make_services):
    svc = make_services(SPEC_CONFIG)
    svc.now = lambda: NOW        # the times in the pinned text
    return svc


def token_of(services, job_id: int) -> str:
    with services.db.read():
        return services.repo.get_job(job_id).token


def submitted(alice, services, **fields):
    job = alice.post_json("/jobs", {"path": "/home/alice/run.sh", **fields}, status=201).json
    return job["id"], token_of(services, job["id"])


PLAIN = ('{{"id": {id}, "name": "run.sh", "native_name": "ms{id}-{tok}_run.sh", "queue": {queue}, "owner": "alice", '
         '"status": "TO_BE_QUEUED", "path": "/home/alice/run.sh", "options": [], "pwd": "/home/alice", '
         '"scheduler_job_id": null, "exit_code": null, "reason": null, "cancel_requested": false, '
         '"created_at": "{now}", "submitted_at": null, "started_at": null, "finished_at": null, "updated_at": "{now}", '
         '"links": {{"self": "/jobs/{id}", "events": "/jobs/{id}/events", "output": "/jobs/{id}/output", '
         '"metrics": "/jobs/{id}/metrics", "why": "/jobs/{id}/why"}}, "resources": {{}}, "native": [], '
         '"env_names": [], "export": null, "stdout": null, "stderr": null, "join": false, "accounting": null, '
         '"array": null, "after": null}}')

ARRAY = ('{{"id": {id}, "name": "sweep", "native_name": "ms{id}-{tok}_sweep", "queue": {queue}, "owner": "alice", '
         '"status": "TO_BE_QUEUED", "path": "/home/alice/run.sh", "options": [], "pwd": "/home/alice", '
         '"scheduler_job_id": null, "exit_code": null, "reason": null, "cancel_requested": false, '
         '"created_at": "{now}", "submitted_at": null, "started_at": null, "finished_at": null, "updated_at": "{now}", '
         '"links": {{"self": "/jobs/{id}", "events": "/jobs/{id}/events", "output": "/jobs/{id}/output", '
         '"metrics": "/jobs/{id}/metrics", "why": "/jobs/{id}/why", "tasks": "/jobs/{id}/tasks"}}, '
         '"resources": {{}}, "native": [], "env_names": [], "export": null, "stdout": null, "stderr": null, '
         '"join": false, "accounting": null, '
         '"array": {{"spec": "1-9:2%2", "count": 5, "limit": 2, "tasks": {{"TO_BE_QUEUED": 5, "HELD": 0, "QUEUED": 0, "RUNNING": 0, "COMPLETED": 0, "ERROR": 0, "CANCELLED": 0}}}}, "after": null}}')

RICH = ('{{"id": {id}, "name": "caf\\u00e9 \\u00e0 2", "native_name": "ms{id}-{tok}_caf____2", "queue": {queue}, '
        '"owner": "alice", "status": "HELD", "path": "/home/alice/run.sh", "options": ["-v", "x y"], '
        '"pwd": "/home/alice/w", "scheduler_job_id": null, "exit_code": null, "reason": null, '
        '"cancel_requested": false, "created_at": "{now}", "submitted_at": null, "started_at": null, '
        '"finished_at": null, "updated_at": "{now}", '
        '"links": {{"self": "/jobs/{id}", "events": "/jobs/{id}/events", "output": "/jobs/{id}/output", '
        '"metrics": "/jobs/{id}/metrics", "why": "/jobs/{id}/why", "tasks": "/jobs/{id}/tasks"}}, '
        '"resources": {{"nodes": 1, "tasks": 2, "cores_per_task": 2, "memory": 1610612736, "walltime": 93784, '
        '"native_queue": "debug", "account": "physics"}}, "native": ["--gres-flags=enforce-binding", "-k"], '
        '"env_names": ["A", "B"], "export": ["PATH"], "stdout": "logs/%x-%j-%a.out", "stderr": "/tmp/%j-%a.err", '
        '"join": false, "accounting": null, '
        '"array": {{"spec": "1-3", "count": 3, "limit": null, "tasks": {{"TO_BE_QUEUED": 3, "HELD": 0, "QUEUED": 0, "RUNNING": 0, "COMPLETED": 0, "ERROR": 0, "CANCELLED": 0}}}}, '
        '"after": {{"ok": [{plain}, "{array}.3"], "any": [{array}]}}}}')


@pytest.fixture
def three(alice, services):
    """A plain job, an array, and a held array with a spec, options, a non-ASCII name and dependencies."""
    slurm = next(q["id"] for q in alice.get("/queues").json["items"] if q["name"] == "Slurm")
    plain, plain_tok = submitted(alice, services, queue="Slurm")
    array, array_tok = submitted(alice, services, queue="Slurm", name="sweep", array="1-10:2%2")
    rich, rich_tok = submitted(
        alice, services, queue="Slurm", name="café à 2", hold=True, options=["-v", "x y"], pwd="/home/alice/w",
        array="1-3", after={"ok": [plain, f"{array}.3"], "any": [array]},
        resources={"nodes": 1, "tasks": 2, "cores_per_task": 2, "memory": "1.5G", "walltime": "1-02:03:04",
                   "native_queue": "debug", "account": "physics"},
        native=["--gres-flags=enforce-binding", "-k"], env={"B": "2,3", "A": "a b"}, export=["PATH"],
        stdout="logs/%x-%j-%a.out", stderr="/tmp/%j-%a.err")
    return [PLAIN.format(id=plain, tok=plain_tok, queue=slurm, now=NOW),
            ARRAY.format(id=array, tok=array_tok, queue=slurm, now=NOW),
            RICH.format(id=rich, tok=rich_tok, queue=slurm, now=NOW, plain=plain, array=array)]


def test_a_listing_is_exactly_these_bytes(alice, three):
    body = alice.get("/jobs").body.decode("ascii")
    assert body == '{"items": [' + ", ".join(three) + '], "next": null}'


def test_a_page_with_more_after_it_has_its_next_link(alice, three):
    body = alice.get("/jobs?limit=2").body.decode("ascii")
    ids = [t.split(",")[0] for t in three]
    assert body == '{"items": [' + ", ".join(three[:2]) + f'], "next": "/jobs?limit=2&after={ids[1][7:]}"' + '}'


def test_a_job_is_its_listing_item_and_its_variables_outputs_and_notify(alice, three):
    rich = three[2]
    rich_id = rich.split(",")[0][7:]
    body = alice.get(f"/jobs/{rich_id}").body.decode("ascii")
    assert body == rich[:-1] + (', "env": {"A": "a b", "B": "2,3"}, '
                                f'"outputs": {{"stdout": "/home/alice/w/logs/caf\\u00e9 \\u00e0 2-{rich_id}-%a.out", '
                                f'"stderr": "/tmp/{rich_id}-%a.err", "join": false}}, "notify": null}}')
