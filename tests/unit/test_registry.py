"""Schedulers are declared once (issue 18): each backend class says what it is, backends.BACKENDS lists the
classes, and every other module iterates that list. A scheduler type named as a literal outside
metasched/backends/ (a ``kind == "yarn"``, a list of types in a schema) is the list repeated: this fails on it."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

from metasched import config as cfgmod
from metasched.backends import BACKENDS, TYPES, infer_type
from metasched.backends.base import Backend

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "metasched"


def _literals(path: pathlib.Path) -> list[tuple[int, str]]:
    """String constants in the module's code (not its docstrings) that are exactly a scheduler type."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return sorted((n.lineno, n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in TYPES
                  and id(n) not in docstrings)


def test_no_module_outside_the_backends_names_a_scheduler_type():
    # transport.py and a node's `transport: local` are how a node is reached (without SSH), not a scheduler
    found = {f"{p.relative_to(PACKAGE.parent)}:{line}: {value!r}"
             for p in PACKAGE.rglob("*.py")
             if "backends" not in p.parts and p.name not in ("node_agent.py", "transport.py")
             for line, value in _literals(p)
             if "transport" not in p.read_text(encoding="utf-8").splitlines()[line - 1]}
    assert not found, "scheduler types named outside metasched/backends/ (iterate backends.BACKENDS):\n" + \
        "\n".join(sorted(found))


def test_the_check_finds_a_repeated_list(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""docstring naming yarn is fine"""\nKINDS = ["sge", "slurm"]\nif kind == "yarn":\n    pass\n')
    assert _literals(bad) == [(2, "sge"), (2, "slurm"), (3, "yarn")]


def test_every_backend_declares_what_it_is():
    for t, cls in BACKENDS.items():
        assert cls.type == t and issubclass(cls, Backend)
        assert cls.inferred_from and re.compile(cls.inferred_from, re.I)
        assert cls.status_commands and cls.sudo_commands, t
        assert "recovery_grace" in cls.OPTIONS, t
        cls({}).process_matcher()


@pytest.mark.parametrize("name, t", [("Grid Engine", "sge"), ("SoGE", "sge"), ("Slurm 22", "slurm"),
                                     ("Apache Hadoop", "yarn"), ("local", "local"), ("Spark standalone", "spark"),
                                     ("PBS", None)])
def test_types_are_inferred_from_the_backends_names(name, t):
    assert infer_type(name) == t


def test_a_new_backend_is_its_class_and_its_line_in_the_registry(monkeypatch):
    """What adding a scheduler takes besides its module: its line in the registry. The config infers the type
    from its names and checks its options; nothing else lists types."""
    class PbsBackend(Backend):
        type = "pbs"
        inferred_from = r"\bpbs\b|torque"
        OPTIONS = ("recovery_grace", "bin_dir")
        status_commands = ("qstat",)
        sudo_commands = ("qsub", "qdel")
    import metasched.backends as backends
    monkeypatch.setitem(backends.BACKENDS, "pbs", PbsBackend)
    monkeypatch.setattr(backends, "TYPES", tuple(backends.BACKENDS))
    monkeypatch.setattr(backends, "_INFERRED", backends._INFERRED + [(re.compile(PbsBackend.inferred_from, re.I),
                                                                       "pbs")])
    c = cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}],
                      "schedulers": [{"name": "Torque", "master": 0, "weight": 100,
                                      "options": {"bin_dir": "/opt/pbs/bin"}}]})
    assert c.schedulers[0].type == "pbs"
    with pytest.raises(Exception, match="options.nope"):
        cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}],
                      "schedulers": [{"name": "Torque", "master": 0, "weight": 100, "options": {"nope": 1}}]})
