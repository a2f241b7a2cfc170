"""The lab is real: SSH nodes with host-key checking, Grid Engine and Slurm running jobs as their owners.

These tests speak only through what metasched itself will use (paramiko as the service user with the
lab's key and known_hosts, sudo to the job owner, the schedulers' client commands), so when they pass
the integration suite stands on real daemons.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import socket
import time
import uuid

import paramiko
import pytest

from metasched.backends.base import command_line, tag
from metasched.backends.slurm import SlurmBackend
from metasched.model import Job, JobStatus
from metasched.transport import LocalTransport
from tests.lab.fixtures import lab_config
from tests.lab.lab import ssh_exec

pytestmark = pytest.mark.lab


def connect(lab, address: str, port: int, extra_host_key: paramiko.PKey | None = None) -> paramiko.SSHClient:
    """Connect the way the service does: key only, known_hosts + RejectPolicy, explicit timeouts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts))
    if extra_host_key is not None:
        client.get_host_keys().add(f"[{address}]:{port}", extra_host_key.get_name(), extra_host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, port=port, username=lab.ssh_user, key_filename=str(lab.key_file),
                   allow_agent=False, look_for_keys=False, timeout=5, auth_timeout=5, banner_timeout=5)
    return client


def run_ok(client: paramiko.SSHClient, command: str) -> str:
    rc, out, err = ssh_exec(client, command)
    assert rc == 0, f"{command!r} exited {rc}: {out} {err}"
    return out


def poll(what: str, fn, timeout: float = 60, interval: float = 0.2):
    """Return fn()'s first truthy value; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what}: not seen within {timeout} s")


@pytest.fixture
def master(lab):
    client = lab.connect(0)
    yield client
    client.close()


def test_every_node_is_reachable_as_the_service_user_and_is_its_own_host(lab):
    assert len(lab.nodes) >= 3
    seen_addresses = set()
    for address, port in lab.node_endpoints:
        client = connect(lab, address, port)
        try:
            assert run_ok(client, "id -un").strip() == "metascheduler"
            addrs = run_ok(client, "ip -o -4 addr show").split()
        finally:
            client.close()
        if address != "127.0.0.1":
            # A namespace node sees its own address, and not the bridge's: a distinct network stack.
            assert f"{address}/24" in addrs
            assert not any(a.startswith("172.31.250.1/") for a in addrs)
        seen_addresses.add(address)
    assert len(seen_addresses) == len(lab.nodes)


def test_an_unknown_host_key_is_rejected(lab):
    rogue = lab.start_untrusted_sshd()
    try:
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            connect(lab, rogue.addr, rogue.port)
        # Control: the same server is accepted once its key is trusted, so the refusal above was
        # about the host key and nothing else.
        key = paramiko.Ed25519Key.from_private_key_file(str(rogue.host_key))
        client = connect(lab, rogue.addr, rogue.port, extra_host_key=key)
        assert run_ok(client, "id -un").strip() == "metascheduler"
        client.close()
    finally:
        rogue.stop()


def test_a_node_sshd_can_be_stopped_and_brought_back(lab):
    address, port = lab.node_endpoints[1]
    lab.stop_node_sshd(1)
    try:
        with pytest.raises((socket.error, paramiko.ssh_exception.NoValidConnectionsError)):
            connect(lab, address, port)
    finally:
        lab.start_node_sshd(1)
    client = connect(lab, address, port)   # same host key: known_hosts still matches
    assert run_ok(client, "id -un").strip() == "metascheduler"
    client.close()


def test_sudo_reaches_job_owners_but_never_root(master):
    assert run_ok(master, "sudo -n -u alice id -un").strip() == "alice"
    # The (ALL,!root) rule leaves root uncovered, so sudo -n wants a password it cannot ask for.
    rc, out, err = ssh_exec(master, "sudo -n -u root id -u")
    assert (rc, out) == (1, "")
    assert "password is required" in err or "not allowed" in err


def test_grid_engine_runs_a_job_as_its_owner_and_accounts_its_exit_status(lab, master):
    name = f"mslab-{uuid.uuid4().hex[:8]}"
    out_file = f"/home/alice/{name}.out"
    script = "id -un; echo hello from sge; exit 3"
    job_id = run_ok(master, f"echo {shlex.quote(script)} | sudo -n -u alice qsub -terse -N {name} "
                            f"-j y -o {out_file} -wd /home/alice").strip()
    assert job_id.isdigit()
    accounting = poll("qacct record of the SGE job",
                      lambda: (lambda r: r[1] if r[0] == 0 else "")(ssh_exec(master, f"qacct -j {job_id}")))
    fields = dict(line.split(None, 1) for line in accounting.splitlines() if len(line.split(None, 1)) == 2)
    # Job ids continue across qmaster restarts, so the record must be this job's (not an old job N).
    assert fields["jobname"].strip() == name
    assert fields["owner"].strip() == "alice"
    assert fields["exit_status"].strip() == "3"
    assert fields["failed"].strip() == "0"
    owner, content = run_ok(master, f"stat -c %U {out_file} && sudo -n -u alice cat {out_file} && "
                                    f"sudo -n -u alice rm {out_file}").split("\n", 1)
    assert owner == "alice"
    assert content.splitlines() == ["alice", "hello from sge"]


def test_slurm_runs_a_job_as_its_owner_and_records_its_exit_code(lab, master):
    out_file = f"/home/bob/mslab-slurm-{uuid.uuid4().hex[:8]}.out"
    script = "#!/bin/sh\nid -un\necho hello from slurm\nexit 3\n"
    job_id = run_ok(master, f"printf %s {shlex.quote(script)} | sudo -n -u bob sbatch --parsable -J mslab "
                            f"-o {out_file} -D /home/bob").strip()
    assert job_id.isdigit()
    state = poll("the Slurm job finishing",
                 lambda: (lambda s: s if s in ("COMPLETED", "FAILED", "CANCELLED") else "")(
                     run_ok(master, f"squeue -h -t all -j {job_id} -o %T").strip()))
    assert state == "FAILED"
    assert re.search(r"\bExitCode=3:0\b", run_ok(master, f"scontrol show job {job_id}"))
    line = poll("the jobcomp line", lambda: next(
        (l for l in lab.jobcomp_path.read_text().splitlines() if l.startswith(f"JobId={job_id} ")), ""))
    assert "UserId=bob(" in line and "JobState=FAILED" in line and "ExitCode=3:0" in line
    owner, content = run_ok(master, f"stat -c %U {out_file} && sudo -n -u bob cat {out_file} && "
                                    f"sudo -n -u bob rm {out_file}").split("\n", 1)
    assert owner == "bob"
    assert content.splitlines() == ["bob", "hello from slurm"]


def test_slurm_jobcomp_finds_an_interrupted_dispatch_by_its_tag(lab, master):
    """The real jobcomp log read the way recovery reads it: a job named with our tag (as the engine names
    it) that ran and ended is found, with its native id and exit status, even once slurmctld forgets it."""
    ours = Job(id=900000000 + uuid.uuid4().int % 99999999, name="rec", queue_id=2, owner="alice",
               status=JobStatus.DISPATCHING, path="/bin/sh", pwd="/home/alice")
    job_id = run_ok(master, f"printf '#!/bin/sh\\nexit 3\\n' | sudo -n -u alice sbatch --parsable "
                            f"-J {tag(ours)} -o /dev/null -D /home/alice").strip()
    poll("the jobcomp line", lambda: next(
        (l for l in lab.jobcomp_path.read_text().splitlines() if l.startswith(f"JobId={job_id} ")), ""))
    backend = SlurmBackend({"jobcomp_file": str(lab.jobcomp_path)})
    res = LocalTransport(30).run(command_line(backend.final_by_tag_argv(ours)))
    native, fs = backend.parse_final_by_tag(ours, res.rc, res.stdout, res.stderr)
    assert (native, fs.status, fs.exit_code) == (job_id, "ERROR", 3)
    other = dataclasses.replace(ours, owner="bob")        # the same name submitted by someone else: not ours
    res = LocalTransport(30).run(command_line(backend.final_by_tag_argv(other)))
    assert backend.parse_final_by_tag(other, res.rc, res.stdout, res.stderr) is None


def test_scheduler_clients_answer_from_inside_a_namespace_node(lab):
    client = lab.connect(2)
    try:
        sge_id = run_ok(client, "echo true | sudo -n -u alice qsub -terse -h -N mslab-ns -o /dev/null -j y").strip()
        slurm_id = run_ok(client, "printf '#!/bin/sh\\ntrue\\n' | sudo -n -u bob sbatch --parsable --hold "
                                  "-J mslab-ns -o /dev/null").strip()
        try:
            assert re.search(rf"^\s*{sge_id}\s.*\balice\b.*\bhqw\b", run_ok(client, "qstat -u '*'"), re.M)
            assert f"{slurm_id}|bob|PENDING" in run_ok(client, "squeue -h -o '%i|%u|%T'")
        finally:
            ssh_exec(client, f"sudo -n -u alice qdel {sge_id}")
            ssh_exec(client, f"sudo -n -u bob scancel {slurm_id}")
    finally:
        client.close()


def test_lab_config_names_every_node_and_the_known_hosts(lab):
    config = lab_config(lab, policy="dynamic", weights=(70, 30))
    assert [(n["ip"], n["port"]) for n in config["nodes"]] == lab.node_endpoints
    assert config["ssh"]["known_hosts"] == str(lab.known_hosts)
    assert [s["weight"] for s in config["schedulers"]] == [70, 30]
    assert config["policy"]["name"] == "dynamic"
