"""The package as a non-editable install sees it: a wheel built from this checkout holds every module,
the SQL files (top-level sql/ shipped as metasched.sql) and the node agent, and works from another
directory."""
from __future__ import annotations

import configparser
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """Built from a clean copy of the source: a stale build/ folder in the checkout would hide mistakes."""
    src = tmp_path_factory.mktemp("src") / "metasched"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "var",
                                                             ".pytest_cache"))
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "-w", str(out), str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return next(out.glob("metasched-*.whl"))


def test_wheel_holds_every_module_and_sql_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for py in (REPO / "metasched").rglob("*.py"):
        assert f"metasched/{py.relative_to(REPO / 'metasched')}" in names, py
    for sql in (REPO / "sql").glob("*.sql"):
        assert f"metasched/sql/{sql.name}" in names, sql
    for asset in ("index.html", "app.js", "app.css"):           # the dashboard (issue 19), served from the package
        assert f"metasched/web/dashboard/{asset}" in names, asset


def test_installed_copy_works_from_another_directory(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import metasched, metasched.db.core as c, metasched.enforcement as e; "
            "assert metasched.__file__.startswith(%r), metasched.__file__; "
            "print(len(c.QUERIES.names()), len(e.agent_program()) > 1000)" % str(target))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    n, agent = p.stdout.split()
    assert int(n) > 40 and agent == "True"


def test_console_scripts_are_declared():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "metasched-api = metasched.runner:main" in scripts
    assert "metasched = metasched.cli:main" in scripts
