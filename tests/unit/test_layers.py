"""The layers of docs/architecture.md, checked: an import that crosses a layer the wrong way fails here."""
from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2] / "metasched"

# What each part of the package may import from metasched (besides itself and the package's __version__).
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "errors": set(),
    "transport": set(),
    "node_agent": set(),                    # sent to the nodes and run there: the standard library only
    "policies": {"model"},
    "dependencies": {"model"},
    "backends": {"model"},
    "enforcement": {"model", "backends"},
    "config": {"model", "errors", "backends"},
    "identity": {"config", "errors"},
    "db": {"model", "errors"},
    "lifecycle": {"model", "db"},
    "events": {"model", "errors", "config"},
    "services": {"model", "errors", "config", "identity", "db", "lifecycle", "backends", "events", "policies",
                 "dependencies"},
    "engine": {"model", "errors", "config", "db", "lifecycle", "backends", "policies", "dependencies",
               "enforcement", "transport", "events"},
    "web": {"model", "errors", "identity", "services", "backends", "events"},
    "metrics": {"model", "services", "web"},
    "cli": {"model"},                       # the CLI speaks HTTP: nothing of the service
}
ROOTS = {"runner", "poller", "preflight", "__main__"}      # composition roots: may import anything


def part(module: str) -> str:
    """metasched.engine.lease -> engine; metasched.model -> model; metasched -> '' (the package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: pathlib.Path) -> set[str]:
    """The metasched modules a file imports (``from .. import x`` counts as importing module x)."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "metasched"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "metasched":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_package(target) and importlib.util.find_spec(sub) is not None else target)
    return found


def _is_package(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.submodule_search_locations is not None


def violations() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        me = part(module)
        if me in ROOTS or me == "":
            continue
        assert me in ALLOWED, f"{module}: which layer is it? add it to ALLOWED and docs/architecture.md"
        for target in imports(path):
            other = part(target)
            if other in ("", me) or other in ALLOWED[me]:
                continue
            out.append(f"{module} imports {target}: {me} may import only {sorted(ALLOWED[me]) or 'nothing'}")
    return out


def test_every_import_follows_the_layers():
    assert violations() == []


def test_the_check_catches_an_import_the_wrong_way(tmp_path, monkeypatch):
    """The checker itself: a model that imported the database would be refused."""
    fake = ROOT / "model.py"
    text = fake.read_text(encoding="utf-8")
    tree_imports = imports(fake)
    assert not any(part(t) == "db" for t in tree_imports)
    bad = tmp_path / "metasched"
    bad.mkdir()
    (bad / "model.py").write_text(text + "\nfrom .db import core\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", bad)
    assert any("metasched.model imports metasched.db.core" in v for v in violations())
