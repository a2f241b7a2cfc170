"""GET /metrics (issue 15): CPU seconds per scheduler and each node's utilisation, the same figures the API
shows. What a cycle's measurement step records is written with the repository methods engine/measure.py
uses, into the running server's database (no scheduler daemons here)."""
from __future__ import annotations

from metasched.db.core import Database
from metasched.db.repository import Repository
from metasched.engine.lease import Identity, Lease

from .conftest import BASE_CONFIG
from .test_metrics import parse_prometheus, value

CONFIG = dict(BASE_CONFIG, nodes=[{"ip": "127.0.0.1", "transport": "local"}, {"ip": "127.0.0.2", "port": 2222}],
              schedulers=[{"name": "local", "type": "local", "master": 0, "weight": 60},
                          {"name": "SGE", "type": "sge", "master": 1, "weight": 40}])
FIGURES = {"at": "2026-11-28T10:00:00.000000Z", "cpu_percent": 37.5, "memory_percent": 61.25,
           "memory_total_bytes": 8 << 30, "memory_available_bytes": 3 << 30, "disk_percent": 80.0, "ncpus": 2,
           "disks": [{"mount": "/", "size_bytes": 100, "used_bytes": 40, "available_bytes": 60, "used_percent": 40.0},
                     {"mount": "/home", "size_bytes": 100, "used_bytes": 80, "available_bytes": 20,
                      "used_percent": 80.0}],
           "load": [1.5, 1.0, 0.5], "jobs": 3}


def test_scheduler_cpu_and_node_utilisation_match_the_api(server_factory):
    srv = server_factory(workers=1, config=CONFIG)
    db = Database(srv.db_path)
    repo = Repository(db)
    try:
        with db.read():
            nodes, queues = repo.list_nodes(), repo.list_queues()
        lease = Lease(db, Identity.of_this_process("poller"), 12.5)
        assert lease.acquire()
        with lease.fenced():
            repo.set_node_metrics(id=nodes[0].id, metrics=FIGURES)      # nodes[1]: never measured
            for cpu in (1.25, 2.5):                                        # two cycles of the local scheduler
                repo.add_queue_cpu(queue_id=queues[0].id, cpu_seconds=cpu)
    finally:
        db.close()
    types, samples = parse_prometheus(srv.tcp("GET", "/metrics").body.decode())
    assert types["metasched_scheduler_cpu_seconds_total"] == "counter"
    assert value(samples, "metasched_scheduler_cpu_seconds_total", queue="local") == 3.75
    assert value(samples, "metasched_scheduler_cpu_seconds_total", queue="SGE") == 0.0
    api = {n["id"]: n for n in srv.root("GET", "/cluster/nodes").json()["items"]}
    node = f"{nodes[0].address}:{nodes[0].port}"
    assert value(samples, "metasched_node_cpu_ratio", node=node) == api[nodes[0].id]["metrics"]["cpu_percent"] / 100
    assert value(samples, "metasched_node_memory_ratio", node=node) == 0.6125
    assert value(samples, "metasched_node_disk_ratio", node=node, mount="/home") == 0.8
    assert value(samples, "metasched_node_load1", node=node) == 1.5
    assert value(samples, "metasched_node_jobs", node=node) == 3
    other = f"{nodes[1].address}:{nodes[1].port}"
    assert api[nodes[1].id]["metrics"] is None
    assert value(samples, "metasched_node_cpu_ratio", node=other) is None     # absent, never a made-up 0
