"""What an admin sees when the service cannot start: a non-zero exit and one line on stderr that says
what is wrong (no traceback, no gunicorn banner)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import BASE_CONFIG, REPO


def run_service(tmp_path, config, *args) -> subprocess.CompletedProcess:
    cfg = tmp_path / "svc.config"
    if isinstance(config, str):
        cfg.write_text(config)
    else:
        cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=REPO)
    argv = [sys.executable, "-m", "metasched", str(cfg), "--socket", str(tmp_path / "api.sock"),
            "--port", "0", "--no-poller", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, f"exited 0; stderr: {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    for frag in fragments:
        assert frag in lines[0], lines[0]
    assert not os.path.exists(os.path.join(os.path.dirname(proc.args[3]), "api.sock")), "it started listening"


def test_bad_policy_name(tmp_path):
    bad = dict(BASE_CONFIG, policy={"name": "fastest"})
    assert_one_line_error(run_service(tmp_path, bad, "--database-file", str(tmp_path / "db.sqlite3")),
                          "policy.name")


def test_scheduler_master_out_of_range(tmp_path):
    bad = dict(BASE_CONFIG, schedulers=[{"name": "local", "type": "local", "master": 3, "weight": 100}])
    assert_one_line_error(run_service(tmp_path, bad, "--database-file", str(tmp_path / "db.sqlite3")),
                          "schedulers[0].master")


def test_unparsable_yaml(tmp_path):
    assert_one_line_error(run_service(tmp_path, "policy: [unclosed\n", "--database-file",
                                      str(tmp_path / "db.sqlite3")))


def test_missing_config_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metasched", str(tmp_path / "nope.config"), "--port", "0",
                           "--socket", str(tmp_path / "api.sock"), "--no-poller"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nope.config" in proc.stderr


@pytest.mark.parametrize("where", ["missing-dir", "dir-is-a-file", "db-is-a-directory", "not-a-database", "proc"])
def test_unusable_database_path(tmp_path, where):
    if where == "missing-dir":
        db = tmp_path / "no" / "such" / "db.sqlite3"
    elif where == "dir-is-a-file":
        (tmp_path / "plain").write_text("x")
        db = tmp_path / "plain" / "db.sqlite3"
    elif where == "db-is-a-directory":
        db = tmp_path / "db.sqlite3"
        db.mkdir()
    elif where == "not-a-database":
        db = tmp_path / "db.sqlite3"
        db.write_bytes(b"this is not an SQLite file\n" * 200)
    else:   # root may write anywhere, except where the kernel says no
        db = "/proc/metasched-test.sqlite3"
    assert_one_line_error(run_service(tmp_path, BASE_CONFIG, "--database-file", str(db)), "database")


# -- a second start never cuts a running service off (issue 21) -----------------------------------

def _inode(path: str) -> int:
    return os.lstat(path).st_ino


def test_a_second_start_leaves_the_running_service_alone(server_factory, tmp_path):
    first = server_factory()
    before = _inode(first.socket_path)
    cfg = tmp_path / "svc.config"
    cfg.write_text(yaml.safe_dump(BASE_CONFIG))
    env = dict(os.environ, PYTHONPATH=REPO)
    for args in (["--port", "0"], ["--port", str(first.port), "--host", "127.0.0.1"]):
        proc = subprocess.run([sys.executable, "-m", "metasched", str(cfg), "--socket", first.socket_path,
                               "--database-file", str(tmp_path / "db.sqlite3"), "--no-poller", *args],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert ("in use" in lines[0] or "running" in lines[0]), lines[0]
        assert _inode(first.socket_path) == before                    # not replaced
        assert first.root("GET", "/status").status == 200             # still serving its socket
        assert first.as_user("alice", "GET", "/jobs").status == 200
    assert not (tmp_path / "db.sqlite3").exists()                     # it stopped before touching anything


def test_a_stale_socket_is_replaced(tmp_path, server_factory):
    import socket as _socket
    stale = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    path = str(tmp_path / "api.sock")
    stale.bind(path)                  # left behind by a service that died: nobody listens
    stale.close()
    proc = subprocess.Popen([sys.executable, "-m", "metasched", str(_config(tmp_path)), "--socket", path,
                             "--port", "0", "--database-file", str(tmp_path / "db.sqlite3"), "--no-poller"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    try:
        from .conftest import UnixHTTPConnection, http_request
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if http_request(UnixHTTPConnection(path), "GET", "/status").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "never answered on the stale socket's path"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def test_something_else_at_the_socket_path_is_left_alone(tmp_path):
    (tmp_path / "api.sock").write_text("an admin's file\n")
    proc = run_service(tmp_path, BASE_CONFIG, "--database-file", str(tmp_path / "db.sqlite3"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a socket" in proc.stderr
    assert (tmp_path / "api.sock").read_text() == "an admin's file\n"


def _config(tmp_path):
    cfg = tmp_path / "svc.config"
    cfg.write_text(yaml.safe_dump(BASE_CONFIG))
    return cfg
