"""Shared by the test_real_* modules: the real server configured for the lab, job directories owned by
the users, and waiting helpers. The service under test is ``python3 -m metasched`` under gunicorn with
its poller, talking to the lab's nodes over SSH as ``metascheduler`` with the lab's key and known_hosts."""
from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import tempfile

from tests.lab.fixtures import lab_config
from tests.server.conftest import Server, start_server, wait_job, wait_until  # noqa: F401 (used by the lab tests)

FINAL = {"COMPLETED", "ERROR", "CANCELLED"}


def schedulers(lab, jobcomp: bool = True) -> list[dict]:
    """Grid Engine through the fast binaries (bin_dir + env after sudo), Slurm with its jobcomp log. The lab's
    Grid Engine flushes accounting at once (accounting_flush_time 0), so recovery need not wait 30 s."""
    return [
        {"name": "SGE", "master": 0, "weight": 50, "type": "sge",
         "options": {"bin_dir": lab.sge_bin, "env": dict(lab.sge_env), "recovery_grace": 3}},
        {"name": "Slurm", "master": 0, "weight": 50, "type": "slurm",
         "options": {"jobcomp_file": str(lab.jobcomp_path)} if jobcomp else {}},
    ]


def real_config(lab, extra_nodes: list[tuple[str, int]] = (), connect_timeout: float = 3,
                interval: float = 1, sched: list[dict] | None = None) -> dict:
    cfg = lab_config(lab, connect_timeout=connect_timeout, command_timeout=30,
                     schedulers=sched if sched is not None else schedulers(lab))
    cfg["nodes"] += [{"ip": a, "port": p} for a, p in extra_nodes]
    cfg["poller"] = {"interval": interval, "wakeup": 0.2}
    return cfg


def start_real_server(lab, users, config: dict, workers: int = 2) -> Server:
    return start_server(users, workers=workers, config=config, poller=True,
                        extra_args=("--ssh-key-file", str(lab.key_file), "--ssh-user", lab.ssh_user))


def user_dirs(users, prefix: str = "metasched-real-") -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
    """A world-traversable base with one directory per user, owned by that user. Not under pytest's
    tmp_path: /tmp/pytest-of-root is 0700 and the jobs (running as the users) could not reach it."""
    base = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    dirs = {}
    for name, pw in users.items():
        d = base / name
        d.mkdir()
        os.chown(d, pw.pw_uid, pw.pw_gid)
        dirs[name] = d
    return base, dirs


def remove(base: pathlib.Path) -> None:
    shutil.rmtree(base, ignore_errors=True)


def script(path: pathlib.Path, body: str, owner: pwd.struct_passwd) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return str(path)


def mkdirs_owned(path: pathlib.Path, below: pathlib.Path, owner: pwd.struct_passwd) -> pathlib.Path:
    """mkdir -p ``path`` and give every new directory below ``below`` to ``owner`` (0755)."""
    path.mkdir(parents=True, exist_ok=True)
    p = path
    while p != below and below in p.parents:
        os.chown(p, owner.pw_uid, owner.pw_gid)
        os.chmod(p, 0o755)
        p = p.parent
    return path


def submit(srv: Server, user: str, body: dict) -> dict:
    r = srv.as_user(user, "POST", "/jobs", body)
    assert r.status == 201, r
    return r.json()


def output_file(directory: pathlib.Path, job: dict, stream: str = "o") -> pathlib.Path:
    """The job's stdout (``o``) or stderr (``e``) file: ``<native name>.o<native id>`` (Grid Engine and
    Slurm), or ``.out``/``.err`` (Slurm, when pwd holds '%' or '\\\\')."""
    names = sorted(os.listdir(directory))
    want = (f".{stream}{job['scheduler_job_id']}", ".out" if stream == "o" else ".err")
    hits = [n for n in names if n.startswith(f"{job['native_name']}.") and n.endswith(want)]
    assert len(hits) == 1, (job, names)
    return directory / hits[0]


def owner_of(path: pathlib.Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
