"""``metasched-api <config> --check``: the pre-flight table and its exit status.

Run as a real command (``python3 -m metasched ... --check``) for what an admin sees, and as
``preflight.collect`` in a child process that became the service user, so that the sudo checks ask
this machine's real sudo policy (the lab's rule: metascheduler may act as any user but root)."""
from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from metasched import config as cfgmod
from metasched import preflight

from .conftest import REPO, free_port

LOCAL = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
    "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100}],
}


def run_check(tmp_path, raw: dict, *extra: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "site.config"
    cfg.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "metasched", str(cfg), "--check",
                           "--database-file", str(tmp_path / "db.sqlite3"), *extra],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)


def rows_of(stdout: str) -> list[list[str]]:
    """The table's rows split on runs of 2+ spaces: node, check, result, detail."""
    lines = stdout.split("\n\n")[0].splitlines()
    assert lines[0].split() == ["NODE", "CHECK", "RESULT", "DETAIL"], stdout
    return [re.split(r"\s{2,}", ln, maxsplit=3) for ln in lines[1:]]


def test_local_node_passes_with_a_row_per_check(tmp_path):
    p = run_check(tmp_path, dict(LOCAL, auth={"proxy_user": "www-data"}))
    assert p.returncode == 0, p.stdout + p.stderr
    rows = rows_of(p.stdout)
    by_check = {r[1]: r for r in rows}
    assert by_check["config"][2] == "ok"
    assert by_check["database"][2] == "ok" and "will be created" in by_check["database"][3]
    assert by_check["local"][:3] == ["127.0.0.1 (local)", "local", "ok"]
    assert by_check["local commands"][2:] == ["ok", "ps python3"]
    assert "0 failed - ready to start" in p.stdout


def test_unreachable_ssh_node_is_a_clear_fail(tmp_path):
    port = free_port()          # nothing listens there
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    raw = {"policy": {"name": "shared"},
           "nodes": [{"ip": "127.0.0.1", "transport": "local"}, {"ip": "127.0.0.1", "port": port}],
           "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 50},
                          {"name": "SGE", "master": 1, "weight": 50}],
           "ssh": {"known_hosts": str(kh), "connect_timeout": 3},
           "auth": {"proxy_user": "www-data"}}
    p = run_check(tmp_path, raw, "--ssh-key-file", str(key), "--ssh-user", "metascheduler")
    assert p.returncode == 1, p.stdout + p.stderr
    rows = rows_of(p.stdout)
    ssh = [r for r in rows if r[0] == f"127.0.0.1:{port}" and r[1] == "ssh"]
    assert len(ssh) == 1 and ssh[0][2] == "FAIL", p.stdout
    assert f"cannot connect to metascheduler@127.0.0.1:{port}" in ssh[0][3] and "refused" in ssh[0][3]
    skipped = [r for r in rows if r[0] == f"127.0.0.1:{port}" and r[1] == "scheduler checks"]
    assert skipped and skipped[0][2] == "FAIL" and "SGE" in skipped[0][3]
    # the healthy local node is still checked and reported ok
    assert ["127.0.0.1 (local)", "local", "ok"] == [r for r in rows if r[1] == "local"][0][:3]
    assert [r[3] for r in rows if r[1] == "ssh key"] == [str(key)]
    assert "1 failed" in p.stdout or "2 failed" in p.stdout


def test_missing_known_hosts_and_key_are_named(tmp_path):
    raw = dict(LOCAL, nodes=[{"ip": "127.0.0.1", "port": free_port()}],
               ssh={"known_hosts": str(tmp_path / "nope"), "key_file": str(tmp_path / "nokey")})
    cfg = cfgmod.parse(raw, source="t", overrides={"server": {"database": str(tmp_path / "db")}})
    rows = {r.check: r for r in preflight.collect(cfg)}
    assert rows["known_hosts"].result == "FAIL" and "does not exist" in rows["known_hosts"].detail
    assert rows["ssh key"].result == "FAIL" and str(tmp_path / "nokey") in rows["ssh key"].detail


def test_socket_without_proxy_user_is_a_warning_not_a_failure(tmp_path):
    p = run_check(tmp_path, LOCAL)
    assert p.returncode == 0, p.stdout + p.stderr
    row = [r for r in rows_of(p.stdout) if r[1] == "trusted proxy"][0]
    assert row[2] == "warn" and "auth.proxy_user" in row[3]


def test_bad_config_is_exit_2_naming_the_key(tmp_path):
    p = run_check(tmp_path, dict(LOCAL, schedulers=[{"name": "local", "type": "local", "master": 3}]))
    assert p.returncode == 2
    assert "schedulers[0].master: 3 is not a node index" in p.stderr


# -- sudo rights, asked of the real sudo as the service user -------------------------------------------

def collect_as(user: str, raw: dict) -> list[dict]:
    """preflight.collect() in a forked child running as ``user`` (nothing imported after the fork)."""
    pw = pwd.getpwnam(user)
    workdir = tempfile.mkdtemp(prefix="metasched-pf-")
    os.chown(workdir, pw.pw_uid, pw.pw_gid)
    cfg = cfgmod.parse(raw, source="t", overrides={"server": {"database": os.path.join(workdir, "db"),
                                                              "socket": os.path.join(workdir, "api.sock")}})
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            os.environ["HOME"] = pw.pw_dir
            out = json.dumps([r.__dict__ for r in preflight.collect(cfg)]).encode()
        except BaseException as exc:  # noqa: BLE001
            out = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
            code = 1
        try:
            with os.fdopen(wfd, "wb") as w:
                w.write(out)
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = json.loads(r.read())
    os.waitpid(pid, 0)
    shutil.rmtree(workdir, ignore_errors=True)
    assert not isinstance(data, dict), data
    return data


@pytest.fixture(scope="module")
def lab_sudo_rule():
    try:
        pwd.getpwnam("metascheduler")
    except KeyError:
        pytest.fail("user metascheduler is missing: run tests/lab/setup-machine.sh")
    p = subprocess.run(["sudo", "-n", "-l", "-U", "metascheduler"], capture_output=True, text=True)
    if "(ALL, !root)" not in p.stdout:
        pytest.fail("this machine has no sudo rule for metascheduler (tests/lab/setup-machine.sh installs "
                    f"one; or install deploy/sudoers/metasched):\n{p.stdout}{p.stderr}")


def test_sudo_checks_pass_for_the_service_user(lab_sudo_rule):
    rows = collect_as("metascheduler", dict(LOCAL, auth={"admins": ["alice"], "proxy_user": "www-data"}))
    got = {r["check"]: r for r in rows}
    assert got["sudo as alice"]["result"] == "ok", rows
    assert got["sudo as alice"]["detail"] == "metascheduler may run sh python3"
    assert got["sudo as root refused"]["result"] == "ok", rows
    assert not [r for r in rows if r["result"] == "FAIL"], rows


def test_sudo_checks_fail_for_a_user_without_the_rule(lab_sudo_rule):
    rows = collect_as("bob", dict(LOCAL, auth={"admins": ["alice"], "proxy_user": "www-data"}))
    got = {r["check"]: r for r in rows}
    assert got["sudo as alice"]["result"] == "FAIL"
    assert "bob may not run as alice: sh" in got["sudo as alice"]["detail"]
    assert "password is required" in got["sudo as alice"]["detail"]


def test_without_an_ordinary_admin_the_sudo_row_says_no_test_user(lab_sudo_rule):
    rows = collect_as("metascheduler", dict(LOCAL, auth={"admins": ["root"], "proxy_user": "www-data"}))
    got = {r["check"]: r for r in rows}
    assert got["sudo as a job owner"]["result"] == "warn"
    assert "no test user" in got["sudo as a job owner"]["detail"]
    assert got["sudo as root refused"]["result"] == "ok"


# -- the database is the service user's alone (issue 21) ------------------------------------------

def _make_db(path, mode: int) -> None:
    import sqlite3
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    os.chmod(path, mode)


def test_a_world_readable_database_or_backup_is_reported(tmp_path):
    _make_db(str(tmp_path / "db.sqlite3"), 0o644)
    _make_db(str(tmp_path / "db-2026-11-30.bak"), 0o644)         # a backup made with the admin's umask
    (tmp_path / "notes.txt").write_text("not a database")
    os.chmod(tmp_path / "notes.txt", 0o644)
    p = run_check(tmp_path, dict(LOCAL, auth={"proxy_user": "www-data"}))
    rows = {r[1]: r for r in rows_of(p.stdout)}
    assert rows["database files"][2] == "warn", p.stdout
    assert "mode 0644: every local user can read it" in rows["database files"][3]
    assert "makes it private at start" in rows["database files"][3]
    assert rows["database backups"][2] == "FAIL" and "db-2026-11-30.bak" in rows["database backups"][3]
    assert "notes.txt" not in p.stdout
    assert p.returncode == 1


def test_a_private_database_is_ok(tmp_path):
    _make_db(str(tmp_path / "db.sqlite3"), 0o600)
    p = run_check(tmp_path, dict(LOCAL, auth={"proxy_user": "www-data"}))
    rows = {r[1]: r for r in rows_of(p.stdout)}
    assert rows["database files"][2:] == ["ok", "db.sqlite3: mode 0600, readable by the service user only"]
    assert "database backups" not in rows
    assert p.returncode == 0, p.stdout


def test_a_group_may_read_it_when_configured(tmp_path):
    _make_db(str(tmp_path / "db.sqlite3"), 0o640)
    os.chown(tmp_path / "db.sqlite3", -1, pwd.getpwnam("bob").pw_gid)
    p = run_check(tmp_path, dict(LOCAL, auth={"proxy_user": "www-data"}))
    row = [r for r in rows_of(p.stdout) if r[1] == "database files"][0]
    assert row[2] == "warn" and "group bob can read it (server.database_group is not set)" in row[3]
    p = run_check(tmp_path, dict(LOCAL, auth={"proxy_user": "www-data"}, server={"database_group": "bob"}))
    row = [r for r in rows_of(p.stdout) if r[1] == "database files"][0]
    assert row[2:] == ["ok", "db.sqlite3: mode 0640, readable by the service user and group bob"], p.stdout


# -- the socket and the local scheduler's files (issue 21) ------------------------------------------

def test_socket_row_says_free_stale_or_in_use(tmp_path, server_factory):
    import socket as _socket
    raw = dict(LOCAL, auth={"proxy_user": "www-data"})
    cfg = cfgmod.parse(raw, source="t", overrides={"server": {"database": str(tmp_path / "db"),
                                                              "socket": str(tmp_path / "api.sock")}})
    assert [(r.result, "is free" in r.detail) for r in preflight.check_socket(cfg)] == [("ok", True)]
    stale = _socket.socket(_socket.AF_UNIX)
    stale.bind(str(tmp_path / "api.sock"))
    stale.close()
    row = preflight.check_socket(cfg)[0]
    assert row.result == "ok" and "stale" in row.detail
    live = server_factory()
    cfg = cfgmod.parse(raw, source="t", overrides={"server": {"database": str(tmp_path / "db"),
                                                              "socket": live.socket_path}})
    row = preflight.check_socket(cfg)[0]
    assert row.result == "warn" and "another metasched-api is running" in row.detail


def test_local_scheduler_row_names_where_its_files_go(tmp_path):
    cfg = cfgmod.parse(dict(LOCAL, auth={"admins": ["alice"]}), source="t",
                       overrides={"server": {"database": str(tmp_path / "db")}})
    row = {r.check: r for r in preflight.check_local_job_files(cfg)}["local job files"]
    assert row.result == "ok" and "0600" in row.detail and "~owner/.metasched" in row.detail
