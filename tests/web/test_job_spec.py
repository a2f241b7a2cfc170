"""What a job asks for (resources, native flags, environment, outputs): accepted, normalised and shown; refused
with a 400 naming the field (and the queue) when its scheduler cannot honour it, storing nothing; its output read
through GET /jobs/{id}/output, for real, as its owner."""
from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import socket
import tempfile
import threading

import pytest

from metasched import lifecycle
from metasched.transport import LocalTransport, SshTransport
from metasched.web.app import create_app

from .conftest import BASE_CONFIG, Client
from .test_jobs import force_status

SPEC_CONFIG = {**BASE_CONFIG, "server": {"max_body_bytes": 256 * 1024}, "schedulers": [
    {"name": "SGE", "master": 0, "weight": 40, "options": {"pe": "smp", "memory_complex": "h_vmem"}},
    {"name": "Slurm", "master": 0, "weight": 30, "options": {"native_forbid": ["--qos"]}},
    {"name": "plain-sge", "master": 0, "weight": 10, "type": "sge"},
    {"name": "local", "master": 0, "weight": 20, "type": "local"},
    {"name": "Spark", "master": 0, "weight": 10, "type": "spark"},
]}


@pytest.fixture
def services(make_services):
    return make_services(SPEC_CONFIG)


def post(client, status=201, **fields):
    return client.post_json("/jobs", {"path": "/home/alice/run.sh", **fields}, status=status).json


def nothing_stored(client):
    return client.get("/jobs").json["items"] == []


# -- accepted and shown -----------------------------------------------------------------------------------

def test_a_job_asks_for_resources_native_flags_environment_and_outputs(alice):
    job = post(alice, queue="Slurm", name="big", resources={
        "nodes": 1, "tasks": 2, "cores_per_task": 2, "memory": "1.5G", "walltime": "1-02:03:04", "gpus_per_node": 1,
        "native_queue": "debug", "account": "physics"},
        native=["--gres-flags=enforce-binding", "-k"], env={"B": "2,3", "A": "a b"}, export=["PATH"],
        stdout="logs/%x-%j.out", stderr="/tmp/%j.err")
    assert job["resources"] == {"nodes": 1, "tasks": 2, "cores_per_task": 2, "memory": 1536 * 1024 ** 2,
                                "walltime": 93784, "gpus_per_node": 1, "native_queue": "debug", "account": "physics"}
    assert (job["native"], job["env_names"], job["export"]) == (["--gres-flags=enforce-binding", "-k"], ["A", "B"],
                                                                ["PATH"])
    assert (job["stdout"], job["stderr"], job["join"]) == ("logs/%x-%j.out", "/tmp/%j.err", False)
    detail = alice.get(f"/jobs/{job['id']}").json
    assert detail["env"] == {"A": "a b", "B": "2,3"}
    assert detail["outputs"] == {"stdout": f"/home/alice/logs/big-{job['id']}.out", "stderr": f"/tmp/{job['id']}.err",
                                 "join": False}
    listed = alice.get("/jobs").json["items"][0]
    assert "env" not in listed and listed["env_names"] == ["A", "B"]


@pytest.mark.parametrize("value, seconds", [(90, 90), ("00:01:00", 60), ("2:00:00", 7200), ("3-00:00:00", 259200),
                                            ("45s", 45), ("30m", 1800), ("2h", 7200), ("1d", 86400)])
def test_walltime_takes_seconds_clock_times_and_units(alice, value, seconds):
    assert post(alice, queue="Slurm", resources={"walltime": value})["resources"] == {"walltime": seconds}


@pytest.mark.parametrize("value, n", [(4096, 4096), ("512M", 512 * 2 ** 20), ("512MB", 512 * 2 ** 20),
                                      ("2GiB", 2 * 2 ** 30), ("1.5g", 3 * 2 ** 29), ("64k", 65536), ("100", 100)])
def test_memory_takes_bytes_and_binary_units(alice, value, n):
    assert post(alice, queue="Slurm", resources={"memory": value})["resources"] == {"memory": n}


def test_outputs_before_dispatch_are_unknown_for_schedulers_that_name_them_after_their_own_id(alice, services):
    job = post(alice, queue="SGE", name="n1")
    assert alice.get(f"/jobs/{job['id']}").json["outputs"] == {"stdout": None, "stderr": None, "join": False}
    with services.db.write():
        j = services.repo.get_job(job["id"])
        for status, nid in (("DISPATCHING", None), ("QUEUED", "4711")):
            j = lifecycle.transition(services.repo, j, job_status(status), actor="poller", reason="test",
                                     now=services.now(), scheduler_job_id=nid)
    native = job["native_name"]
    assert alice.get(f"/jobs/{job['id']}").json["outputs"] == {
        "stdout": f"/home/alice/{native}.o4711", "stderr": f"/home/alice/{native}.e4711", "join": False}
    joined = post(alice, queue="local", join=True)
    assert alice.get(f"/jobs/{joined['id']}").json["outputs"] == {
        "stdout": f"/home/alice/{joined['native_name']}.o{joined['id']}", "stderr": None, "join": True}


def job_status(name):
    from metasched.model import JobStatus
    return JobStatus(name)


# -- refused, naming the field, storing nothing ------------------------------------------------------------

@pytest.mark.parametrize("queue, fields, field, words", [
    ("SGE", {"resources": {"gpus_per_node": 1}}, "resources.gpus_per_node", ["Grid Engine", "SGE", "-l"]),
    ("SGE", {"resources": {"nodes": 2}}, "resources.nodes", ["tasks"]),
    ("plain-sge", {"resources": {"cores_per_task": 2}}, "resources.cores_per_task", ["parallel environment", "pe"]),
    ("plain-sge", {"resources": {"memory": "1G"}}, "resources.memory", ["memory_complex"]),
    ("local", {"resources": {"gpus_per_node": 1}}, "resources.gpus_per_node", ["local"]),
    ("local", {"resources": {"nodes": 3}}, "resources.nodes", ["one node"]),
    ("local", {"resources": {"account": "x"}}, "resources.account", ["local"]),
    ("local", {"native": ["-x"]}, "native", ["native flags"]),
    ("SGE", {"stdout": "/home/alice/$HOME/out"}, "stdout", ["'$'"]),
    ("SGE", {"stdout": "host:/x"}, "stdout", ["':'"]),
    ("SGE", {"name": "a$b", "stderr": "%x.err"}, "stderr", ["'$'"]),
])
def test_what_a_scheduler_cannot_honour_is_a_400_naming_the_field_and_the_queue(alice, queue, fields, field, words):
    err = post(alice, status=400, queue=queue, **fields)
    assert err["field"] == field and f"queue {queue}" in err["description"], err
    for w in words:
        assert w in err["description"], err
    assert nothing_stored(alice)


@pytest.mark.parametrize("queue, native, index, replaced_by", [
    ("Slurm", ["-J", "other"], 0, "`name`"),
    ("Slurm", ["-kJother"], 0, "`name`"),
    ("Slurm", ["--job=x"], 0, "--job-name"),
    ("Slurm", ["--chdir=/tmp"], 0, "`pwd`"),
    ("Slurm", ["-o", "x.out"], 0, "`stdout`"),
    ("Slurm", ["--error=x"], 0, "`stderr`"),
    ("Slurm", ["--export=ALL"], 0, "`env`"),
    ("Slurm", ["--parsable"], 0, "job id"),
    ("Slurm", ["--hold"], 0, "`hold`"),
    ("Slurm", ["--wrap=hostname"], 0, "`path`"),
    ("Slurm", ["-W"], 0, "follows the job"),
    ("Slurm", ["--clusters=other"], 0, "cluster"),
    ("Slurm", ["--comment", "ok", "extra.sh"], 2, "`path`"),
    ("Slurm", [":", "-n", "1"], 0, "heterogeneous"),
    ("SGE", ["-N", "x"], 0, "`name`"),
    ("SGE", ["-wd", "/tmp"], 0, "`pwd`"),
    ("SGE", ["-cwd"], 0, "`pwd`"),
    ("SGE", ["-j", "y"], 0, "`join`"),
    ("SGE", ["-v", "A=1"], 0, "`env`"),
    ("SGE", ["-V"], 0, "`env`"),
    ("SGE", ["-terse"], 0, "job id"),
    ("SGE", ["-sync", "y"], 0, "follows the job"),
    ("SGE", ["-l", "h_rt=60", "-ac", "x=1"], 2, "context"),
    ("SGE", ["-t", "1-10"], 0, "array"),
    ("SGE", ["-@", "/tmp/opts"], 0, "file"),
    ("SGE", ["-w", "v"], 0, "does not submit"),
    ("SGE", ["-pe", "smp"], 0, "2 values"),
    ("SGE", ["-nosuch"], 0, "not a qsub option"),
])
def test_a_flag_metasched_owns_is_a_400_saying_which_field_replaces_it(alice, queue, native, index, replaced_by):
    err = post(alice, status=400, queue=queue, native=native)
    assert err["field"] == f"native[{index}]" and replaced_by in err["description"], err
    assert nothing_stored(alice)


def test_native_flags_that_ask_for_a_resource_twice_are_refused_and_alone_are_fine(alice):
    err = post(alice, status=400, queue="Slurm", resources={"walltime": 60}, native=["--time=5"])
    assert err["field"] == "native[0]" and "resources.walltime" in err["description"]
    err = post(alice, status=400, queue="SGE", resources={"walltime": 60}, native=["-l", "arch=x,h_rt=10"])
    assert err["field"] == "native[0]" and "resources.walltime" in err["description"]
    assert post(alice, queue="SGE", native=["-pe", "smp", "8", "-l", "h_rt=10"])["native"] == [
        "-pe", "smp", "8", "-l", "h_rt=10"]
    assert post(alice, queue="Slurm", native=["--gres=gpu:1", "--time", "5"])["native"] == ["--gres=gpu:1", "--time", "5"]


def test_a_site_may_refuse_more_native_flags(alice):
    err = post(alice, status=400, queue="Slurm", native=["--qos=high"])
    assert err["field"] == "native[0]" and "native_forbid" in err["description"]


@pytest.mark.parametrize("fields, field", [
    ({"env": {"1BAD": "x"}}, "env.1BAD"),
    ({"env": {"A-B": "x"}}, "env.A-B"),
    ({"env": {"A": "x\u0000y"}}, "env.A"),
    ({"env": {f"V{i}": "" for i in range(257)}}, "env"),
    ({"env": {f"V{i}": "x" * 16000 for i in range(3)}}, "env"),
    ({"env": {"A": "x" * 16385}}, "env.A"),
    ({"export": ["OK", "not ok"]}, "export[1]"),
    ({"export": "some"}, "export"),
    ({"stdout": "%N.out"}, "stdout"),
    ({"stderr": "a\nb"}, "stderr"),
    ({"stderr": "x.err", "join": True}, "stderr"),
    ({"native": ["a\u0000"]}, "native[0]"),
    ({"resources": {"walltime": "1:99:00"}}, "resources.walltime"),
    ({"resources": {"walltime": "soon"}}, "resources.walltime"),
    ({"resources": {"memory": "lots"}}, "resources.memory"),
    ({"resources": {"memory": "2000000T"}}, "resources.memory"),
    ({"resources": {"cores_per_task": 0}}, "resources.cores_per_task"),
    ({"resources": {"native_queue": "-x"}}, "resources.native_queue"),
    ({"resources": {"cpus": 2}}, "resources.cpus"),
])
def test_bad_spec_fields_are_400_naming_them(alice, fields, field):
    err = post(alice, status=400, queue="Slurm", **fields)
    assert field in (err.get("field"), *(err.get("fields") or ())), err
    assert nothing_stored(alice)


# -- edit -------------------------------------------------------------------------------------------------

def test_edit_merges_resources_replaces_the_rest_and_checks_again(alice):
    job = post(alice, queue="SGE", hold=True, name="a", resources={"walltime": 60, "memory": "1G"}, stdout="%x.out",
               env={"A": "1"})
    url = f"/jobs/{job['id']}"
    new = alice.patch_json(url, {"resources": {"walltime": None, "cores_per_task": 2}, "env": {"B": "2"},
                                 "stdout": None, "join": True}).json
    assert new["resources"] == {"memory": 2 ** 30, "cores_per_task": 2}
    assert (new["env_names"], new["stdout"], new["join"]) == (["B"], None, True)
    ev = alice.get(f"{url}/events").json["items"][-1]
    assert all(w in ev["reason"] for w in ("resources", "env", "stdout", "join"))
    # a name Grid Engine would expand in the output path is refused when it is the edit that brings it
    alice.patch_json(url, {"stdout": "%x.out"})
    err = alice.patch_json(url, {"name": "x$y"}, status=400).json
    assert err["field"] == "stdout" and "'$'" in err["description"]
    # and moving it to a queue that cannot honour it
    err = alice.patch_json(url, {"queue": "local", "native": ["-l", "x=1"]}, status=400).json
    assert err["field"] == "native"
    assert alice.get(url).json["queue"] == job["queue"] and alice.get(url).json["native"] == []


# -- GET /jobs/{id}/output: read for real, as the owner ---------------------------------------------------

@pytest.fixture
def alice_dir(users):
    pw = pwd.getpwnam("alice")
    base = pathlib.Path(tempfile.mkdtemp(prefix="metasched-web-output-"))
    os.chmod(base, 0o755)
    d = base / "alice"
    d.mkdir()
    os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(d, 0o700)                      # only alice (and root) can read in it: the read must be hers
    yield d
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def reading(services, users):
    """The app with a real transport for the nodes: this machine's shell (the node is 127.0.0.1), through
    sudo -n -u <owner> as the service does on a master node."""
    services.remote = lambda node: LocalTransport(command_timeout=30)
    app = create_app(services)
    return lambda uid: Client(app, uid)


def dispatched(services, alice, **fields):
    job = post(alice, queue="local", **fields)
    force_status(services, job["id"], job_status("RUNNING"))
    return job


def write_as(path: pathlib.Path, data: bytes, user="alice"):
    path.write_bytes(data)
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o600)


def test_a_jobs_output_is_read_as_its_owner_a_bounded_piece_at_a_time(services, alice, reading, users, alice_dir):
    job = dispatched(services, alice, pwd=str(alice_dir), stdout="out-%j.txt", stderr="err.txt")
    me = reading(users["alice"])
    url = f"/jobs/{job['id']}/output"
    err = me.get(url, status=404).json
    assert "does not exist" in err["description"] and f"out-{job['id']}.txt" in err["description"]
    data = bytes(range(256)) * 40 + "é\n".encode()
    write_as(alice_dir / f"out-{job['id']}.txt", data)
    r = me.get(url)
    assert r.body == data and r.content_type == "application/octet-stream"
    assert (r.headers["X-Output-Size"], r.headers["X-Output-Offset"]) == (str(len(data)), "0")
    assert r.headers["X-Output-Path"] == str(alice_dir / f"out-{job['id']}.txt")
    assert me.get(url + "?offset=10&length=5").body == data[10:15]
    r = me.get(url + "?offset=-3")
    assert r.body == data[-3:] and r.headers["X-Output-Offset"] == str(len(data) - 3)
    assert me.get(url + f"?offset={len(data) + 50}").body == b""
    assert me.get(url + "?offset=-999999").body == data
    write_as(alice_dir / "err.txt", b"oops\n")
    assert me.get(url + "?stream=stderr").body == b"oops\n"
    # another user's job does not exist for bob
    assert reading(users["bob"]).get(url, status=404).json["description"] == f"job {job['id']} not found"


@pytest.mark.parametrize("query, field", [("stream=both", "stream"), ("offset=x", "offset"), ("length=0", "length"),
                                          ("length=99999999", "length"), ("tail=1", None)])
def test_bad_output_parameters_are_400(services, alice, reading, users, query, field):
    job = dispatched(services, alice)
    err = reading(users["alice"]).get(f"/jobs/{job['id']}/output?{query}", status=400).json
    assert err.get("field") == field or field is None


def test_output_not_there_yet_or_joined_or_not_a_file_is_404(services, alice, reading, users, alice_dir):
    me = reading(users["alice"])
    waiting = post(alice, queue="SGE", pwd=str(alice_dir))
    assert "no stdout yet" in me.get(f"/jobs/{waiting['id']}/output", status=404).json["description"]
    joined = dispatched(services, alice, pwd=str(alice_dir), join=True)
    assert "joined" in me.get(f"/jobs/{joined['id']}/output?stream=stderr", status=404).json["description"]
    fifo = dispatched(services, alice, pwd=str(alice_dir), stdout="fifo")
    os.mkfifo(alice_dir / "fifo")
    os.chown(alice_dir / "fifo", users["alice"], -1)
    assert "not a regular file" in me.get(f"/jobs/{fifo['id']}/output", status=404).json["description"]


def test_a_file_the_owner_cannot_read_is_never_read_for_them(services, alice, reading, users, alice_dir):
    """The read is the owner's: a stdout path naming a file of someone else's is not theirs to see."""
    job = dispatched(services, alice, stdout="/root/.metasched-web-test-secret")
    secret = pathlib.Path("/root/.metasched-web-test-secret")
    secret.write_text("root's\n")
    try:
        secret.chmod(0o600)
        r = reading(users["alice"]).get(f"/jobs/{job['id']}/output", expect_errors=True)
        assert r.status_int in (404, 503) and b"root's" not in r.body, r
    finally:
        secret.unlink()


def test_a_master_node_that_does_not_answer_in_time_is_a_503_not_a_stuck_worker(services, alice, users, tmp_path):
    """A node that accepts the connection and then says nothing (no SSH banner): the read gives up after the
    transport's timeouts and answers 503; the web worker is free again."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    (tmp_path / "known_hosts").write_text("")
    port = silent.getsockname()[1]
    services.remote = lambda node: SshTransport("127.0.0.1", port, user="metascheduler", key_file=None,
                                                known_hosts=str(tmp_path / "known_hosts"), connect_timeout=0.5,
                                                command_timeout=0.5)
    try:
        me = Client(create_app(services), users["alice"])
        job = dispatched(services, alice)
        err = me.get(f"/jobs/{job['id']}/output", status=503).json
        assert "cannot read" in err["description"] and "127.0.0.1:22" in err["description"], err
        assert me.get(f"/jobs/{job['id']}").json["id"] == job["id"]       # the app answers again
    finally:
        stop.set()
        t.join()
        for c in accepted:
            c.close()
        silent.close()


# -- arrays (issue 16) with what they ask for: each task's, with %a in its output patterns -------------------

def test_an_arrays_output_patterns_need_the_task_index_and_show_it(alice):
    job = post(alice, queue="Slurm", array="1-4", stdout="logs/%x-%j.%a.out", env={"A": "1"},
               resources={"walltime": 60})
    assert (job["array"]["count"], job["stdout"], job["resources"]) == (4, "logs/%x-%j.%a.out", {"walltime": 60})
    detail = alice.get(f"/jobs/{job['id']}").json
    assert detail["outputs"]["stdout"] == f"/home/alice/logs/run.sh-{job['id']}.%a.out"
    assert detail["array"]["tasks"]["TO_BE_QUEUED"] == 4 and detail["env"] == {"A": "1"}
    err = post(alice, 400, queue="Slurm", array="1-4", stdout="one-file.out")
    assert err["field"] == "stdout" and "put %a" in err["description"]
    err = post(alice, 400, queue="Slurm", stderr="e.%a")
    assert err["field"] == "stderr" and "this job is not an array" in err["description"]
    err = alice.patch_json(f"/jobs/{job['id']}", {"stderr": "no-index.err"}, status=400).json
    assert err["field"] == "stderr"
    assert alice.patch_json(f"/jobs/{job['id']}", {"stderr": "e/%a.err"}).json["stderr"] == "e/%a.err"


def test_an_array_asks_its_scheduler_for_what_it_can_honour_per_task(alice):
    err = post(alice, 400, queue="plain-sge", array="1-3", resources={"memory": "1G"})
    assert err["field"] == "resources.memory"
    err = post(alice, 400, queue="Slurm", array="1-3", native=["--array=1-9"])
    assert err["field"] == "native[0]" and "give it in `array`" in err["description"]
    assert post(alice, queue="local", array="1-3", resources={"cores_per_task": 1, "walltime": "1m"})["array"]
    err = post(alice, 400, queue="Spark", array="1-3")
    assert err["field"] == "array" and "Spark has no job arrays" in err["description"]
    assert post(alice, queue="Spark")["array"] is None              # a plain application is fine


def test_each_task_of_an_array_has_its_output_read_with_task(services, alice, reading, users, alice_dir):
    job = dispatched(services, alice, pwd=str(alice_dir), array="1-3", stdout="out-%a.txt")
    me = reading(users["alice"])
    url = f"/jobs/{job['id']}/output"
    err = me.get(url, status=400).json
    assert err["field"] == "task" and "give ?task=N" in err["description"]
    write_as(alice_dir / "out-2.txt", b"task two\n")
    r = me.get(url + "?task=2")
    assert r.body == b"task two\n" and r.headers["X-Output-Path"] == str(alice_dir / "out-2.txt")
    assert "out-3.txt does not exist" in me.get(url + "?task=3", status=404).json["description"]
    assert me.get(url + "?task=9", status=404).json["description"] == f"task {job['id']}.9 not found"
    plain = dispatched(services, alice, pwd=str(alice_dir))
    assert me.get(f"/jobs/{plain['id']}/output?task=1", status=404).json["description"].startswith("task ")
