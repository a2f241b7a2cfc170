"""Several workers writing to one database file at once: nothing lost, nothing doubled, never locked."""
from __future__ import annotations

import collections
import threading

from metasched import config as cfgmod
from metasched.db.core import Database
from metasched.identity import Authority
from metasched.services import Services

CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "10.0.0.1"}],
    "schedulers": [{"name": "SGE", "master": 0, "weight": 60}, {"name": "Slurm", "master": 0, "weight": 40}],
}
THREADS, JOBS = 8, 200


def test_parallel_submissions_each_stored_once(tmp_path):
    path = str(tmp_path / "db.sqlite3")
    cfg = cfgmod.parse(CONFIG)
    first = Database(path)
    first.migrate()
    Services(first, cfg, Authority(cfg.auth, service_uid=999999)).sync_config()
    errors: list[str] = []
    barrier = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        db = Database(path)                     # as each gunicorn worker: its own Services and connection
        svc = Services(db, cfg, Authority(cfg.auth, service_uid=999999))
        caller = svc.authority.caller("alice" if n % 2 else "bob", "socket")
        barrier.wait()
        try:
            for i in range(JOBS):
                svc.submit_job(caller, {"queue": "SGE" if i % 2 else "Slurm", "path": "/tmp/x.sh",
                                        "name": f"w{n}-j{i}"})
                if i % 50 == 0:
                    svc.list_jobs(caller, limit=10)
        except Exception as exc:
            errors.append(f"worker {n}: {exc!r}")
        finally:
            db.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    names = collections.Counter(r[0] for r in first.conn.execute("SELECT name FROM jobs"))
    assert len(names) == THREADS * JOBS and set(names.values()) == {1}
    assert first.conn.execute("SELECT count(*) FROM job_events").fetchone()[0] == THREADS * JOBS
    ids = [r[0] for r in first.conn.execute("SELECT id FROM jobs ORDER BY id")]
    assert ids == list(range(1, THREADS * JOBS + 1))
    first.close()
