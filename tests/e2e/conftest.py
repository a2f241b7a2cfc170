from tests.server.conftest import pytest_runtest_makereport, server_factory, users  # noqa: F401
