"""Configuration: the shipped files load, the original JSON layout loads, every error names its key path."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from metasched import config as C
from metasched.errors import ConfigError
from metasched.model import Policy

ROOT = pathlib.Path(__file__).resolve().parents[2]

VALID = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "10.0.0.1", "port": 22}, {"ip": "10.0.0.2"}],
    "schedulers": [{"name": "SGE", "master": 0, "weight": 60}, {"name": "Slurm", "master": 1, "weight": 40}],
}

ORIGINAL_JSON = {"cluster": {
    "policy": {"name": "best_effort", "highest_priority": "1"},
    "nodes": [{"ip": "10.0.0.1", "port": "22"}, {"ip": "10.0.0.2", "port": "2222"}],
    "schedulers": [{"name": "SGE", "master": "0", "weight": "50"},
                   {"name": "Apache Hadoop", "master": "1", "weight": "50"}],
}}


def test_shipped_configs_load():
    t = C.load(str(ROOT / "config" / "test.config"))
    assert t.policy is Policy.BEST_EFFORT and t.high_priority == 0
    assert [s.type for s in t.schedulers] == ["sge", "slurm", "yarn",
                                              "spark"]
    assert t.auth.admins == ("ops",) and t.server.max_body_bytes == 65536
    local = C.load(str(ROOT / "config" / "local.config"))
    assert local.schedulers[0].type == "local" and local.nodes[0].transport == "local"


SECTIONS = {"poller": C.PollerConfig, "ssh": C.SshConfig, "auth": C.AuthConfig,
            "enforcement": C.EnforcementConfig, "server": C.ServerConfig, "retention": C.RetentionConfig,
            "metrics": C.MetricsConfig,
            "events": C.EventsConfig,
            "workflows": C.WorkflowsConfig}
LISTS = {"nodes": C.NodeConfig, "schedulers": C.SchedulerConfig}


def test_example_config_names_every_option():
    """config/test.config must show every option of metasched/config.py (it is the reference)."""
    text = (ROOT / "config" / "test.config").read_text()
    raw = yaml.safe_load(text)
    missing = []
    top = {f.name for f in dataclasses.fields(C.Config)} - {"source", "high_priority", "policy"}
    for name in top - set(SECTIONS) - set(LISTS):
        missing.append(name)
    for name in ("name", "high_priority"):
        if name not in raw["policy"]:
            missing.append(f"policy.{name}")
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name not in (raw.get(section) or {}):
                missing.append(f"{section}.{f.name}")
    for section, cls in LISTS.items():
        keys = set().union(*(item.keys() for item in raw[section]))
        # a key may be shown commented out (e.g. an inferred type)
        keys |= set(re.findall(r"^\s*#\s*(\w+):", text, re.M))
        for f in dataclasses.fields(cls):
            if f.name not in keys:
                missing.append(f"{section}[].{f.name}")
    assert not missing, f"config/test.config lacks: {missing}"
    for section in SECTIONS:                      # and each option is explained in a comment
        for key in raw[section]:
            assert re.search(rf"^\s*{key}:.*#", text, re.M), f"{section}.{key} has no comment"


def test_original_json_layout_loads(tmp_path):
    p = tmp_path / "cluster.json"
    p.write_text(json.dumps(ORIGINAL_JSON, indent=2))
    c = C.load(str(p))
    assert c.policy is Policy.BEST_EFFORT and c.high_priority == 1
    assert [(n.ip, n.port) for n in c.nodes] == [("10.0.0.1", 22), ("10.0.0.2", 2222)]
    assert [(s.name, s.master, s.weight, s.type) for s in c.schedulers] == [
        ("SGE", 0, 50, "sge"), ("Apache Hadoop", 1, 50, "yarn")]
    assert c.source == str(p)


def test_defaults():
    c = C.parse(VALID)
    assert c.nodes[1].port == 22 and c.nodes[1].transport == "ssh"
    assert c.poller == C.PollerConfig() and c.server == C.ServerConfig()


def _with(path: str, value, base=None):
    """A copy of VALID with the value at a dotted path (``schedulers.1.master``) set, or removed
    when value is DELETE."""
    raw = copy.deepcopy(base or VALID)
    *parents, last = path.split(".")
    d = raw
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d.setdefault(p, {})
    key = int(last) if isinstance(d, list) else last
    if value is DELETE:
        del d[key]
    else:
        d[key] = value
    return raw


DELETE = object()

ERRORS = [
    ("missing nodes", _with("nodes", DELETE), "nodes: "),
    ("empty nodes", _with("nodes", []), "nodes: "),
    ("node without ip", _with("nodes.1", {"port": 22}), "nodes[1].ip: "),
    ("bad port", _with("nodes.1.port", 70000), "nodes[1].port: 70000 is out of range"),
    ("port not a number", _with("nodes.0.port", "ssh"), "nodes[0].port: expected an integer"),
    ("duplicate node", _with("nodes.1", {"ip": "10.0.0.1", "port": 22}), "nodes[1]: duplicate node"),
    ("bad transport", _with("nodes.0.transport", "telnet"), "nodes[0].transport: "),
    ("missing schedulers", _with("schedulers", DELETE), "schedulers: "),
    ("master out of range", _with("schedulers.1.master", 3), "schedulers[1].master: 3 is not a node index (0..1)"),
    ("master not a number", _with("schedulers.0.master", "first"), "schedulers[0].master: "),
    ("missing master", _with("schedulers.0.master", DELETE), "schedulers[0].master: required"),
    ("weight 101", _with("schedulers.0.weight", 101), "schedulers[0].weight: 101 is out of range (0..100)"),
    ("weight negative", _with("schedulers.1.weight", "-1"), "schedulers[1].weight: -1 is out of range"),
    ("unknown policy", _with("policy.name", "round_robin"), "policy.name: expected one of"),
    ("missing policy", _with("policy", DELETE), "policy.name: required"),
    ("best_effort without high priority", _with("policy.name", "best_effort"), "policy.high_priority: required"),
    ("high priority out of range", _with("policy", {"name": "best_effort", "high_priority": 2}),
     "policy.high_priority: 2 is not a scheduler index (0..1)"),
    ("unknown top-level key", _with("colour", "red"), "colour: unknown key"),
    ("unknown scheduler key", _with("schedulers.0.queue", "all.q"), "schedulers[0].queue: unknown key"),
    ("unknown section key", _with("poller.intervall", 5), "poller.intervall: unknown key"),
    ("duplicate scheduler name", _with("schedulers.1.name", "sge"), "schedulers[1].name: duplicate scheduler name"),
    ("type not inferable", _with("schedulers.1.name", "Torque"), "schedulers[1].type: required, cannot infer"),
    ("unknown type", _with("schedulers.1.type", "pbs"), "schedulers[1].type: expected one of"),
    ("interval not positive", _with("poller.interval", 0), "poller.interval: expected a positive number"),
    ("interval not a number", _with("poller.interval", "soon"), "poller.interval: expected a number"),
    ("enabled not bool", _with("poller.enabled", "maybe"), "poller.enabled: expected true or false"),
    ("admins not a list", _with("auth.admins", "root"), "auth.admins: expected a list"),
    ("bad enforcement", _with("enforcement.method", "magic"), "enforcement.method: "),
    ("bad parent group", _with("enforcement.parent_group", "../x"), "enforcement.parent_group: "),
    ("section not a mapping", _with("ssh", [1]), "ssh: expected a mapping"),
    ("tiny body limit", _with("server.max_body_bytes", 10), "server.max_body_bytes: 10 is out of range"),
    ("options not a mapping", _with("schedulers.0.options", "-q all.q"), "schedulers[0].options: "),
    ("unknown backend option", _with("schedulers.1.options", {"partition": "debug"}),
     "schedulers[1].options.partition: unknown key (expected one of: bin_dir, check_paths, env, jobcomp_file"),
]


@pytest.mark.parametrize("raw, prefix", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_names_the_key_path(raw, prefix):
    with pytest.raises(ConfigError) as info:
        C.parse(raw)
    assert str(info.value).startswith(prefix), str(info.value)


def test_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^\(top level\): "):
        C.parse([1, 2])


def test_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.config"
    p.write_text("policy:\n  name: shared\nnodes:\n  - ip: [unclosed\nschedulers: []\n")
    with pytest.raises(ConfigError) as info:
        C.load(str(p))
    msg = str(info.value)
    assert msg.startswith(f"{p}: not valid YAML or JSON (line ")
    assert re.search(r"\(line (\d+)", msg).group(1) in ("4", "5")


def test_unreadable_file():
    with pytest.raises(ConfigError, match=r"^/nonexistent/x.config: cannot read config file"):
        C.load("/nonexistent/x.config")


def test_command_line_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(VALID))
    c = C.load(str(p), {"server": {"port": 9000, "database": None}, "ssh": {"user": "ms"}})
    assert c.server.port == 9000 and c.server.database == C.ServerConfig().database and c.ssh.user == "ms"


# -- metasched-api refuses bad input with one line ------------------------------------------------

def _run_api(*args, timeout=30):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "metasched", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


def _one_line_error(proc, *words):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_api_refuses_a_bad_config(tmp_path):
    p = tmp_path / "bad.config"
    p.write_text(yaml.safe_dump(_with("schedulers.1.master", 3)))
    _one_line_error(_run_api(str(p), "--no-poller"), "schedulers[1].master: 3 is not a node index (0..1)")


def test_api_refuses_a_missing_config(tmp_path):
    _one_line_error(_run_api(str(tmp_path / "none.config")), "none.config", "cannot read")


@pytest.mark.parametrize("db", ["/proc/metasched-test.sqlite3", "/etc/passwd/db.sqlite3", "/nonexistent/dir/db.sqlite3"])
def test_api_refuses_an_unusable_database_path(db):
    """Paths nobody can create a database at (not even root): /proc, below a regular file, a missing dir."""
    _one_line_error(_run_api(str(ROOT / "config" / "test.config"), "--no-poller", "--database-file", db), db.rsplit("/", 1)[0])
