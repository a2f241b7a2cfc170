"""The dashboard (issue 19) as its users see it, in a real headless Chromium against the real service: alice logs in
with a token, submits a job from the form and watches it run and complete without a reload, reads its output, cancels
another job; she sees none of bob's jobs and bob's job's page is a 404 page; an admin changes the mode only after its
dry-run preview; every page is photographed at 1280 and 390 px. No test may leave an error in the browser's console
or a failed request (tests/ui/conftest.py)."""
from __future__ import annotations

import pytest

from tests.server.conftest import wait_job

from .conftest import png_size, script


def submit_api(srv, user, body) -> dict:
    r = srv.as_user(user, "POST", "/jobs", body)
    assert r.status == 201, r
    return r.json()


def output_may_not_exist_yet(page) -> None:
    """A job's page open while the job starts may ask for its output before the job has created the file: the API's
    documented 404 ("no such file yet"), which the page shows as such and asks again. Nothing else may fail."""
    page.expect_failure("/output?stream=")


def badge(page) -> str:
    return page.text("#view h1 .state")


def test_login_sets_an_httponly_strict_cookie_and_no_token_in_the_page(browser, tokens):
    page = browser()
    page.login(tokens["alice"])
    cookies = {c["name"]: c for c in page.d.get_cookies()}
    c = cookies["metasched_session"]
    assert c["httpOnly"] is True and c["sameSite"] == "Strict", c
    assert c["value"] != tokens["alice"]
    assert page.d.execute_script("return document.cookie") == ""           # scripts cannot read it
    assert tokens["alice"] not in page.d.current_url and tokens["alice"] not in page.d.page_source
    assert "alice" in page.text("#who")
    page.click("#logout")
    page.until(lambda: page.d.execute_script("return location.hash") == "#/login", "the login page after logout")
    page.ready()
    assert "metasched_session" not in {c["name"] for c in page.d.get_cookies()}


def test_a_bad_token_shows_the_apis_message_and_logs_nobody_in(browser):
    page = browser()
    page.expect_failure("/ui/login")           # the 401 is the point of this test
    page.open("/login")
    page.fill("token", "mst_not-a-token")
    page.click("#login-form button[type=submit]")
    page.until(lambda: "invalid, expired or revoked token" in page.text("#login-form"), "the login error")
    assert page.css("[name=token]").get_attribute("aria-invalid") == "true"
    assert not page.d.get_cookies()


def test_alice_submits_from_the_form_and_sees_it_run_and_complete_live(browser, srv, tokens, home, users):
    path = script(home / "hello.sh", 'sleep 2\necho "hello from $(id -un): $1"\n', users["alice"])
    page = browser()
    page.login(tokens["alice"])
    page.go("/submit")
    page.fill("path", path)
    page.fill("name", "from-the-form")
    page.fill("options", "world")
    page.fill("resources.walltime", "00:05:00")
    page.click("#submit-form button[type=submit]")
    page.until(lambda: page.d.execute_script("return location.hash").startswith("#/jobs/"), "the job's page")
    page.ready()
    job_id = int(page.d.execute_script("return location.hash").rsplit("/", 1)[1])
    page.d.execute_script("window.__no_reload = 'still here'")
    output_may_not_exist_yet(page)
    seen = set()

    def state():
        seen.add(badge(page).split()[-1] if badge(page) else "")
        return "COMPLETED" in seen
    page.until(state, "the job to complete", timeout=60)
    assert "RUNNING" in seen, f"the page showed {seen}"
    assert page.d.execute_script("return window.__no_reload") == "still here"       # live, not reloaded
    page.collect()
    assert any(f'"job": {{"id": {job_id},' in d and '"new_status": "COMPLETED"' in d for d in page.sse), page.sse
    page.until(lambda: "hello from alice: world" in page.text("#output"), "the job's output")
    assert "Exit code\n0" in page.text("#view") or "Exit code 0" in page.text("#view")
    assert "walltime 00:05:00" in page.text("#view")
    timeline = page.text("#timeline")
    assert "RUNNING" in timeline and "COMPLETED" in timeline
    # the list shows it too, with what it asked for and its times
    page.go("/jobs")
    row = page.text("#jobs-table")
    assert "from-the-form" in row and "COMPLETED" in row and "walltime 00:05:00" in row
    assert srv.as_user("alice", "GET", f"/jobs/{job_id}").json()["status"] == "COMPLETED"


def test_the_jobs_list_follows_the_event_stream(browser, srv, tokens, home, users):
    """The list asks the API again only when an event says so (its own polling runs only while the stream is down):
    a job submitted elsewhere appears, runs and completes in the open page."""
    path = script(home / "elsewhere.sh", "sleep 1\n", users["alice"])
    page = browser()
    page.login(tokens["alice"])
    page.go("/jobs")
    page.d.execute_script("window.__no_reload = 'still here'")
    job = submit_api(srv, "alice", {"queue": "local", "path": path, "name": "submitted-by-the-cli"})
    page.until(lambda: "submitted-by-the-cli" in page.text("#jobs-table"), "the new job in the list")
    page.until(lambda: "COMPLETED" in page.text(f"tr.job:has(a[href='#/jobs/{job['id']}'])"), "COMPLETED in the list")
    assert page.d.execute_script("return window.__no_reload") == "still here"
    assert "live" in page.text("#jobs-count")
    page.collect()
    assert sum(f'"job": {{"id": {job["id"]},' in d for d in page.sse) >= 3, page.sse      # submitted, running, completed


def test_the_submit_form_shows_the_apis_validation_message(browser, tokens):
    page = browser()
    page.expect_failure("/jobs")        # the 400 answer is what the form shows
    page.login(tokens["alice"])
    page.go("/submit")
    page.fill("path", "relative/job.sh")
    page.click("#submit-form button[type=submit]")
    page.until(lambda: page.all("#submit-result .message.error"), "the error message")
    shown = page.text("#submit-result")
    assert "path" in shown and "absolute" in shown, shown
    assert page.css("[name=path]").get_attribute("aria-invalid") == "true"
    assert page.d.switch_to.active_element.get_attribute("name") == "path"          # focus goes to the field


def test_alice_cancels_another_job_after_confirming(browser, srv, tokens, home, users):
    path = script(home / "long.sh", "sleep 300\n", users["alice"])
    job = submit_api(srv, "alice", {"queue": "local", "path": path, "name": "to-cancel"})
    wait_job(srv, "alice", job["id"], {"RUNNING"}, 30)
    page = browser()
    output_may_not_exist_yet(page)
    page.login(tokens["alice"])
    page.go(f"/jobs/{job['id']}")
    page.until(lambda: "RUNNING" in badge(page), "RUNNING")
    page.click("#cancel")
    page.accept_confirm(f"Cancel job {job['id']}")
    page.until(lambda: "CANCELLED" in badge(page), "the job to be cancelled", timeout=60)
    assert wait_job(srv, "alice", job["id"], {"CANCELLED"}, 5)["status"] == "CANCELLED"


def test_alice_edits_a_held_job_and_releases_it(browser, srv, tokens, home, users):
    path = script(home / "held.sh", 'echo "args: $*"\n', users["alice"])
    job = submit_api(srv, "alice", {"queue": "local", "path": path, "name": "held-one", "hold": True})
    page = browser()
    page.login(tokens["alice"])
    page.go(f"/jobs/{job['id']}")
    assert "HELD" in badge(page)
    assert "held" in page.text("#why").lower()                    # why it waits, while it waits
    page.click("#edit summary")
    page.fill("edit-name", "renamed")
    page.fill("edit-options", "one\ntwo words")
    page.click("#edit-form button[type=submit]")
    page.accept_confirm(f"Save the changes to job {job['id']}")
    page.until(lambda: "renamed" in page.text("#view h1"), "the new name")
    output_may_not_exist_yet(page)
    page.click("#release")
    page.accept_confirm(f"Release job {job['id']}")
    page.until(lambda: "COMPLETED" in badge(page), "the released job to complete", timeout=60)
    page.until(lambda: "args: one two words" in page.text("#output"), "its output")
    shown = srv.as_user("alice", "GET", f"/jobs/{job['id']}").json()
    assert (shown["name"], shown["options"]) == ("renamed", ["one", "two words"])


def test_alice_sees_none_of_bobs_jobs_and_bobs_job_is_a_404_page(browser, srv, tokens):
    bobs = submit_api(srv, "bob", {"queue": "local", "path": "/bin/true", "name": "bobs-secret", "hold": True})
    mine = submit_api(srv, "alice", {"queue": "local", "path": "/bin/true", "name": "alices-own", "hold": True})
    page = browser()
    page.login(tokens["alice"])
    page.go("/jobs")
    listing = page.text("#jobs-table")
    assert "alices-own" in listing and "bobs-secret" not in listing
    assert f"#/jobs/{bobs['id']}" not in page.d.page_source
    assert not page.all("[name=owner]")                     # no user filter for non-admins
    page.expect_failure(f"/jobs/{bobs['id']}")
    page.go(f"/jobs/{bobs['id']}")
    assert page.text("#not-found") == "404: not found"
    assert "bobs-secret" not in page.text("#view")
    # the admin sees both, and can filter by user
    admin = browser()
    admin.login(tokens["root"])
    admin.go("/jobs")
    both = admin.text("#jobs-table")
    assert "bobs-secret" in both and "alices-own" in both
    admin.select("sort", "name:asc")                        # sorting works at any width (not only by headers)
    names = [td.text for td in admin.all("#jobs-table tr.job td[data-label=Name]")]
    assert names == sorted(names, key=str.lower) or names == sorted(names), names
    admin.fill("owner", "bob\n", form="form.filters")
    admin.until(lambda: "alices-own" not in admin.text("#jobs-table"), "the user filter")
    assert "bobs-secret" in admin.text("#jobs-table")
    for j, who in ((bobs, "bob"), (mine, "alice")):
        srv.as_user(who, "DELETE", f"/jobs/{j['id']}")


def test_an_admin_changes_the_mode_after_a_dry_run_preview(browser, srv, tokens):
    before = srv.root("GET", "/cluster/mode").json()["policy"]
    target = "exclusive" if before != "exclusive" else "shared"
    page = browser()
    page.login(tokens["root"])
    page.go("/admin")
    page.select("policy", target)
    assert not page.css("#apply").is_enabled()          # nothing to apply before a preview
    page.click("#preview-button")
    page.until(lambda: f"Preview: {target}" in page.text("#preview"), "the preview")
    assert srv.root("GET", "/cluster/mode").json()["policy"] == before     # a preview changes nothing
    assert "Proposed share" in page.text("#preview")
    page.click("#apply")
    page.accept_confirm(f"Change the cluster mode to {target}")
    page.until(lambda: f"The cluster mode is now {target}" in page.text("#mode-result"), "the change")
    assert srv.root("GET", "/cluster/mode").json()["policy"] == target
    assert page.text("#current-policy") == target
    # usage per user and per scheduler is on the same page
    assert "Per user" in page.text("#usage") and "Per scheduler" in page.text("#usage")
    srv.root("PUT", "/cluster/mode", {"policy": before})


def test_alice_cannot_use_the_admin_page(browser, tokens):
    page = browser()
    page.login(tokens["alice"])
    assert not page.css("#nav-admin").is_displayed()
    page.go("/admin")
    assert "Only admins" in page.text("#view")


def test_the_dashboard_works_from_the_keyboard(browser, tokens):
    from selenium.webdriver.common.keys import Keys
    page = browser()
    page.open("/login")
    assert page.d.switch_to.active_element.get_attribute("name") == "token"      # focus starts in the form
    page.d.switch_to.active_element.send_keys(tokens["alice"], Keys.ENTER)
    page.until(lambda: page.d.execute_script("return location.hash") == "#/", "the overview")
    page.ready()
    assert page.d.switch_to.active_element.get_attribute("id") == "view"        # a new view takes the focus
    for _ in range(10):                      # back (Shift+Tab) from the view to the Jobs link; Enter follows it
        page.d.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        if page.d.switch_to.active_element.text == "Jobs":
            break
    assert page.d.switch_to.active_element.text == "Jobs"
    page.d.switch_to.active_element.send_keys(Keys.ENTER)
    page.until(lambda: page.d.execute_script("return location.hash") == "#/jobs", "the jobs page")
    page.ready()
    assert page.css("[data-nav=jobs]").get_attribute("aria-current") == "page"


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_is_photographed_and_fits_the_width(browser, srv, tokens, artifacts, width, home, users):
    path = script(home / "shot.sh", "echo screenshot\n", users["alice"])
    job = submit_api(srv, "alice", {"queue": "local", "path": path, "name": "for-the-screenshot",
                                    "resources": {"cores_per_task": 1, "memory": "64M"}})
    wait_job(srv, "alice", job["id"], {"COMPLETED"}, 30)
    array = submit_api(srv, "alice", {"queue": "local", "path": "/bin/true", "name": "an-array", "array": "1-3",
                                      "hold": True})
    page = browser()
    page.width(width)
    page.open("/login")
    shots = {"login": page.screenshot(artifacts / f"login-{width}.png")}
    page.login(tokens["root"])
    views = {"overview": "/", "jobs": "/jobs", "job": f"/jobs/{job['id']}", "submit": "/submit", "admin": "/admin"}
    for name, fragment in views.items():
        page.go(fragment)
        if name == "jobs":           # an array is one row that expands into its tasks
            page.click(".expand")
            page.until(lambda: page.all("tr.task td table"), "the array's tasks")
        if name == "job":
            page.until(lambda: "screenshot" in page.text("#output"), "the output")
        overflow = page.d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} at {width} px is {overflow} px wider than the window"
        shots[name] = page.screenshot(artifacts / f"{name}-{width}.png")
    for name, shot in shots.items():
        assert shot.stat().st_size > 2000, f"{shot} is (nearly) empty"
        assert png_size(shot)[0] == width, (name, png_size(shot))
    srv.as_user("alice", "DELETE", f"/jobs/{array['id']}")
