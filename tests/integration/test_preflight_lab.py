"""The pre-flight check (`metasched-api <config> --check`) against the real lab, run as the service user
(metascheduler) with the lab's key and known_hosts: it passes, and it fails with a clear row when a node's
key or host key is wrong."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile

import pytest
import yaml

from tests.integration.real import real_config
from tests.server.conftest import REPO


@pytest.fixture
def workdir():
    """A directory the service user owns (config, database directory, a wrong key)."""
    pw = pwd.getpwnam("metascheduler")
    d = tempfile.mkdtemp(prefix="metasched-preflight-")
    os.chmod(d, 0o755)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    yield d
    subprocess.run(["rm", "-rf", d], check=False)


def run_check(lab, workdir: str, config: dict, key_file: str) -> subprocess.CompletedProcess:
    cfg = os.path.join(workdir, "check.config")
    config = dict(config, auth={"admins": ["alice"]})       # the ordinary user the sudo checks test with
    with open(cfg, "w") as f:
        yaml.safe_dump(config, f)
    os.chmod(cfg, 0o644)
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        ["setpriv", "--reuid=metascheduler", "--regid=metascheduler", "--init-groups",
         sys.executable, "-m", "metasched", cfg, "--check", "--ssh-key-file", key_file,
         "--ssh-user", lab.ssh_user, "--database-file", os.path.join(workdir, "db.sqlite3"), "--socket", "none"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def rows(out: str) -> list[list[str]]:
    """[node, check, result, detail] per row, cut at the header's column positions."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    cols = [lines[head].index(name) for name in ("CHECK", "RESULT", "DETAIL")]
    table = []
    for line in lines[head + 1:]:
        if not line.strip():
            break
        table.append([line[:cols[0]].strip(), line[cols[0]:cols[1]].strip(), line[cols[1]:cols[2]].strip(),
                      line[cols[2]:].strip()])
    return table


def test_preflight_passes_against_the_lab(lab, workdir):
    p = run_check(lab, workdir, real_config(lab), str(lab.key_file))
    assert p.returncode == 0, p.stdout + p.stderr
    table = rows(p.stdout)
    nodes = {f"{a}:{port}" for a, port in lab.node_endpoints}
    reached = {r[0] for r in table if len(r) > 2 and r[2] == "ok"}
    assert nodes <= reached, p.stdout
    assert not [r for r in table if len(r) > 2 and r[2] == "FAIL"], p.stdout
    # the sudo rules were really tested (as the service user): as alice allowed, as root refused
    sudo_rows = [r for r in table if len(r) > 2 and "sudo" in r[1]]
    assert sudo_rows and all(r[2] == "ok" for r in sudo_rows), p.stdout


def test_preflight_fails_with_a_clear_row_for_a_wrong_key(lab, workdir):
    key = os.path.join(workdir, "wrong_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    pw = pwd.getpwnam("metascheduler")
    os.chown(key, pw.pw_uid, pw.pw_gid)
    p = run_check(lab, workdir, real_config(lab), key)
    assert p.returncode != 0
    failed = [r for r in rows(p.stdout) if len(r) > 2 and r[2] == "FAIL"]
    assert any(r[0] == f"{lab.nodes[1].address}:{lab.nodes[1].port}" for r in failed), p.stdout
    assert all("auth" in r[3].lower() for r in failed if r[1] == "ssh"), p.stdout


def test_preflight_fails_with_a_clear_row_for_an_unknown_host_key(lab, workdir):
    rogue = lab.start_untrusted_sshd()
    try:
        p = run_check(lab, workdir, real_config(lab, extra_nodes=[(rogue.addr, rogue.port)]), str(lab.key_file))
    finally:
        rogue.stop()
    assert p.returncode != 0
    bad = [r for r in rows(p.stdout) if r and r[0] == f"{rogue.addr}:{rogue.port}"]
    assert bad and bad[0][2] == "FAIL" and "known_hosts" in bad[0][3], p.stdout
