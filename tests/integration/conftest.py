# The lab plugin's fixture and hook, imported rather than listed in `pytest_plugins`: pytest refuses
# `pytest_plugins` in a conftest below the rootdir ("non-top-level conftest") when run as `pytest tests`.
# A top-level tests/conftest.py could say `pytest_plugins = ["tests.lab.fixtures"]` instead.
from tests.lab.fixtures import lab, pytest_terminal_summary, spark  # noqa: F401
# The real server's fixtures (users alice/bob, its stderr attached to failing tests' reports).
from tests.server.conftest import pytest_runtest_makereport, users  # noqa: F401
