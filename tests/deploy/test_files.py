"""The files an admin installs from deploy/: each is checked by the tool that will read it
(visudo, systemd-analyze, nginx in test_nginx.py, sh) and against the code it must agree with."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from metasched.backends import BACKENDS, get_backend
from metasched.config import ServerConfig
from metasched.model import Job, JobSpec, JobStatus

from .conftest import REPO, SITE, SOCKET_IN_SITE, require_binary

DEPLOY = os.path.join(REPO, "deploy")
SUDOERS = os.path.join(DEPLOY, "sudoers", "metasched")
UNIT = os.path.join(DEPLOY, "systemd", "metasched.service")
INSTALLER = os.path.join(DEPLOY, "install-node-agent.sh")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# -- sudoers ---------------------------------------------------------------------------------------

def test_sudoers_file_passes_visudo(tmp_path):
    visudo = require_binary("visudo", "sudo")
    p = subprocess.run([visudo, "-cf", SUDOERS], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "parsed OK" in p.stdout
    broken = tmp_path / "broken"
    broken.write_text(read(SUDOERS) + "metascheduler ALL = (ALL NOPASSWD: /usr/bin/qsub\n")
    assert subprocess.run([visudo, "-cf", str(broken)], capture_output=True).returncode != 0


def _aliases(text: str) -> dict[str, list[str]]:
    return {m.group(1): [c.strip() for c in m.group(2).split(",")]
            for m in re.finditer(r"^Cmnd_Alias\s+(\w+)\s*=\s*(.+)$", text, re.M)}


def test_sudoers_lets_owners_commands_run_as_anyone_but_root_and_only_the_agent_as_root():
    text = read(SUDOERS)
    rules = [ln for ln in text.splitlines() if ln.startswith("metascheduler ")]
    assert len(rules) == 2, rules
    aliases = _aliases(text)
    as_users = re.match(r"metascheduler ALL = \(ALL, !root\) NOPASSWD: (.+)$", rules[0])
    as_root = re.match(r"metascheduler ALL = \(root\) NOPASSWD: (\w+)$", rules[1])
    assert as_users and as_root, rules
    owner_cmds = [c for a in as_users.group(1).split(",") for c in aliases[a.strip()]]
    assert all(c.startswith("/") for c in owner_cmds), "sudoers needs absolute command paths"
    # every command preflight (and the backends) run after `sudo -u <owner>` is allowed
    needed = {c for cls in BACKENDS.values() for c in cls.sudo_commands}
    assert needed <= {os.path.basename(c) for c in owner_cmds}
    # the node agent: the fixed path the installer writes, and nothing else as root
    assert aliases[as_root.group(1)] == ["/usr/local/libexec/metasched-node-agent"]
    assert re.search(r"^DEST=\$\{METASCHED_AGENT_DEST:-/usr/local/libexec/metasched-node-agent\}$",
                     read(INSTALLER), re.M)


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_command_a_backend_runs_as_the_owner_is_one_preflight_checks(kind):
    """What the sudoers rule must allow is what the backends really run after `sudo -n -u <owner> --`
    (single and batched submits, final-state questions, cancels): preflight checks exactly that list."""
    backend = get_backend(kind, {})
    job = Job(id=7, name="x", queue_id=1, owner="alice", status=JobStatus.DISPATCHING, path="/home/alice/j.sh",
              pwd="/home/alice")
    ran = dataclasses.replace(job, status=JobStatus.RUNNING,
                              scheduler_job_id="client:4242" if kind == "yarn" else "4242")
    lines = [backend.batch_line(job), backend.batch_line(job)]
    # a job with variables of its own runs its scheduler client through sh (never env right after sudo)
    with_env = dataclasses.replace(job, spec=JobSpec(env=(("A", "1"),), export="all"))
    argvs = [backend.submit_argv(job, "alice"), backend.batch_submit_argv(lines, "alice"),
             backend.submit_argv(with_env, "alice"),
             backend.cancel_argv(ran, "alice"), backend.final_argv(ran)]
    for j in (ran,) + ((job,) if backend.final_by_tag_argv else ()):
        run_as, entry = backend.final_entry(j)
        argvs.append(backend.final_batch_argv([entry, entry], run_as))
    as_owner = {argv[5] for argv in argvs if argv[:5] == ["sudo", "-n", "-u", "alice", "--"]}
    assert as_owner and as_owner <= set(BACKENDS[kind].sudo_commands), as_owner


# -- systemd unit ----------------------------------------------------------------------------------

# systemd.exec(5): these turn no_new_privs on for a service with User=, which would break sudo
IMPLY_NO_NEW_PRIVS = ("DynamicUser", "LockPersonality", "MemoryDenyWriteExecute", "PrivateDevices", "ProtectClock",
                      "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules", "ProtectKernelTunables",
                      "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
                      "SystemCallArchitectures", "SystemCallFilter", "SystemCallLog")


def _settings(text: str) -> dict[str, str]:
    text = re.sub(r"\\\n\s*", " ", text)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)=(.*)$", text, re.M)}


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_binary("systemd-analyze", "systemd")
    # only the ExecStart binary is replaced: it is installed by pip into the venv, not present here
    unit = tmp_path / "metasched.service"
    text = read(UNIT)
    assert text.count("/opt/metasched/venv/bin/metasched-api") == 2   # ExecStart and the comment
    unit.write_text(text.replace("/opt/metasched/venv/bin/metasched-api", shutil.which("true")))
    p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr


def test_unit_keeps_sudo_working_and_paths_consistent():
    s = _settings(read(UNIT))
    assert s["User"] == "metascheduler"
    assert s["NoNewPrivileges"] == "no"
    present = [k for k in IMPLY_NO_NEW_PRIVS if k in s]
    assert not present, f"{present} would silently set no_new_privs and break sudo for local nodes"
    assert s["StateDirectory"] == "metasched" and s["RuntimeDirectory"] == "metasched"
    assert s["ProtectSystem"] == "strict" and set(s["ReadWritePaths"].split()) == {"/var/lib/metasched",
                                                                                  "/run/metasched"}
    argv = s["ExecStart"].split()
    assert argv[1] == "/etc/metasched/metasched.config"
    opt = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("--")}
    assert opt["--database-file"] == "/var/lib/metasched/db.sqlite3"
    assert opt["--socket"] == SOCKET_IN_SITE                          # what nginx proxies to
    from metasched.runner import build_parser
    args = build_parser().parse_args(argv[1:])                       # the runner accepts this command line
    assert (args.port, args.ssh_user) == (0, "metascheduler")


def test_nginx_body_limit_is_the_services_default():
    m = re.search(r"^\s*client_max_body_size\s+(\d+)([kKmM]?);", read(SITE), re.M)
    assert m, "client_max_body_size missing from the nginx site"
    size = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    assert size == ServerConfig().max_body_bytes


# -- node agent installer --------------------------------------------------------------------------

def _install(src: str | None, dest: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, METASCHED_AGENT_DEST=dest)
    return subprocess.run(["sh", INSTALLER] + ([src] if src else []), capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.fixture
def safe_dir():
    """A directory whose every ancestor is root-owned and not writable by others (not under /tmp)."""
    d = tempfile.mkdtemp(prefix="metasched-agent-", dir="/run")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_installer_puts_the_agent_root_owned_and_executable(safe_dir, tmp_path):
    src = tmp_path / "node_agent.py"
    src.write_text("#!/usr/bin/env python3\nprint('{}')\n")
    dest = os.path.join(safe_dir, "libexec", "metasched-node-agent")
    p = _install(str(src), dest)
    assert p.returncode == 0, p.stderr
    st = os.stat(dest)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    assert read(dest) == src.read_text()
    assert hashlib.sha256(src.read_bytes()).hexdigest() in p.stdout
    assert subprocess.run([dest], capture_output=True, text=True).stdout == "{}\n"
    # a second install replaces it
    src.write_text("#!/usr/bin/env python3\nprint('[]')\n")
    assert _install(str(src), dest).returncode == 0 and read(dest) == src.read_text()


def test_installer_refuses_a_directory_others_can_write(tmp_path):
    src = tmp_path / "node_agent.py"
    src.write_text("#!/usr/bin/env python3\n")
    p = _install(str(src), str(tmp_path / "libexec" / "metasched-node-agent"))    # under /tmp (mode 1777)
    assert p.returncode != 0
    assert "writable by group or others" in p.stderr


def test_installer_names_a_missing_agent_file(safe_dir):
    p = _install("/nonexistent/node_agent.py", os.path.join(safe_dir, "metasched-node-agent"))
    assert p.returncode != 0 and "/nonexistent/node_agent.py not found" in p.stderr


def test_nginx_passes_the_event_stream_unbuffered_and_keeps_it_open_past_the_heartbeat():
    """GET /events/stream has its own location: buffering off, and a read timeout far above the service's
    keep-alive interval (events.stream_heartbeat), so an idle stream is never cut by nginx."""
    from metasched.config import EventsConfig
    site = read(SITE)
    m = re.search(r"location = /events/stream \{(.*?)\n    \}", site, re.S)
    assert m, "deploy/nginx/metasched.conf has no location for /events/stream"
    block = m.group(1)
    assert re.search(r"^\s*proxy_buffering off;", block, re.M)
    assert re.search(r"^\s*proxy_set_header X-Remote-User \"\";", block, re.M)   # never a client's user name
    timeout = re.search(r"^\s*proxy_read_timeout (\d+)([smh]);", block, re.M)
    seconds = int(timeout.group(1)) * {"s": 1, "m": 60, "h": 3600}[timeout.group(2)]
    assert seconds > 4 * EventsConfig().stream_heartbeat
