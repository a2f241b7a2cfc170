"""The dashboard behind the real nginx site from deploy/ in its SSO variant (tests/deploy/conftest.py): the site names
the user, so nobody logs in and no cookie is set; pages, calls and the event stream all go through nginx (TLS)."""
from __future__ import annotations

import pytest

from tests.deploy.conftest import nginx_factory  # noqa: F401

from .conftest import CONFIG, script


@pytest.fixture(scope="module")
def srv(server_factory):
    """The service as the site's comments say to configure it: nginx's worker user is the trusted proxy."""
    return server_factory(workers=2, config=dict(CONFIG, auth={"proxy_user": "www-data"}), poller=True)


@pytest.fixture(scope="module")
def sso(srv, nginx_factory):  # noqa: F811
    """$http_x_sso_user stands in for an SSO module's variable: the browser sends X-SSO-User, nginx names the user."""
    return nginx_factory(srv.socket_path, sso_variable="$http_x_sso_user")


def test_behind_the_sso_site_alice_needs_no_login_and_follows_her_job_live(browser, srv, sso, home, users):
    path = script(home / "sso.sh", 'sleep 1\necho "via the site: $(id -un)"\n', users["alice"])
    page = browser(base=f"https://127.0.0.1:{sso.https_port}", headers={"X-SSO-User": "alice"})
    page.expect_failure("/output?stream=")      # asked for while the job starts: "no file yet" (test_dashboard.py)
    page.open("/")
    assert page.d.execute_script("return location.hash") == "#/"          # no login page
    assert "alice" in page.text("#who") and "signed in by the site" in page.text("#who")
    assert not page.all("#logout")
    page.go("/submit")
    page.fill("path", path)
    page.click("#submit-form button[type=submit]")
    page.until(lambda: page.d.execute_script("return location.hash").startswith("#/jobs/"), "the job's page")
    page.ready()
    page.until(lambda: "COMPLETED" in page.text("#view h1 .state"), "the job to complete", timeout=60)
    page.until(lambda: "via the site: alice" in page.text("#output"), "its output")
    assert not page.d.get_cookies()                                       # nothing to steal: no session
    page.collect()
    assert any('"new_status": "COMPLETED"' in d for d in page.sse), "the event stream through nginx: " + repr(page.sse)
