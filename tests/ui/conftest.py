"""The dashboard in a real headless Chromium: Debian's ``chromium`` driven through Debian's ``chromium-driver`` by
selenium (the package's test extra), which is given both paths and never downloads a browser or a driver.

The service is the real one (tests/server/conftest.py: gunicorn, 2 workers, the poller, the ``local`` backend: jobs
really run on this machine as alice and bob). Each test gets a fresh browser (no cookie survives a test); when the
test ends, the browser's console must hold no error and no request may have failed (an HTTP status >= 400 or a
network error) except the ones the test named as expected (``page.expect_failure``).

Screenshots go to $METASCHED_TEST_ARTIFACTS/ui when that is set, else under pytest's tmp dir (the path is printed).
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import struct
import time

import pytest

from tests.server.conftest import own_directory, pytest_runtest_makereport, server_factory, users  # noqa: F401
from tests.server.conftest import owned_script as script  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
    "schedulers": [{"name": "local", "type": "local", "master": 0, "weight": 100, "options": {"grace": 2}}],
    "poller": {"interval": 1, "wakeup": 0.2},
}
WAIT = 30.0


def _prerequisites() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver "
                    f"(tests/lab/setup-machine.sh installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]' (it drives the system's chromium)")


@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory(workers=2, config=CONFIG, poller=True)


@pytest.fixture(scope="module")
def tokens(srv):
    """An API token of alice's, bob's and root's (root is an admin), made over the unix socket as each of them."""
    out = {}
    for name in ("alice", "bob"):
        r = srv.as_user(name, "POST", "/tokens", {"description": "dashboard test"})
        assert r.status == 201, r
        out[name] = r.json()["token"]
    r = srv.root("POST", "/tokens", {"description": "dashboard test (admin)"})
    assert r.status == 201, r
    out["root"] = r.json()["token"]
    return out


@pytest.fixture
def home(users):
    """A directory of alice's own (the jobs' scripts and output files live there)."""
    with own_directory(users["alice"], "metasched-ui-") as d:
        yield d


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> pathlib.Path:
    base = os.environ.get("METASCHED_TEST_ARTIFACTS")
    d = pathlib.Path(base) / "ui" if base else tmp_path_factory.mktemp("ui-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {d}")
    return d


def png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


class Page:
    """One Chromium tab on the service's TCP address, with what the tests need of it."""

    def __init__(self, driver, base: str):
        self.d = driver
        self.base = base
        self.expected = []         # URL parts of requests that are expected to fail (e.g. another user's job: 404)
        self.console = []
        self.failures = []
        self.sse = []              # the data of every server-sent event the page received
        self._requests = {}

    # -- navigation and waiting ---------------------------------------------------------------------------
    def open(self, fragment: str = "/") -> None:
        self.d.get(f"{self.base}/ui/#{fragment}")
        self.ready()

    def go(self, fragment: str) -> None:
        """Change the view as a link would (no page load)."""
        self.d.execute_script("location.hash = arguments[0]", fragment)
        self.ready()

    def ready(self, timeout: float = WAIT) -> None:
        """Until the current view has loaded (the router marks <main data-ready>)."""
        self.until(lambda: self.d.execute_script(
            "const m = document.getElementById('view'); return m && m.dataset.ready === '1' && "
            "!m.hasAttribute('aria-busy')"), "the view to load", timeout)

    def until(self, fn, what: str, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = fn()
            except Exception as exc:  # noqa: BLE001 - an element may be replaced while read: try again
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.1)
        raise AssertionError(f"waited {timeout:.0f} s for {what} (last: {last!r}); page text:\n{self.text()[:3000]}")

    # -- reading and acting -------------------------------------------------------------------------------
    def css(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str = "body") -> str:
        try:
            return self.css(selector).text
        except Exception:  # noqa: BLE001
            return ""

    def click(self, selector: str) -> None:
        """Click it, finding it again when the page redrew it in between (a live update replaces a job's buttons)."""
        from selenium.common.exceptions import StaleElementReferenceException

        def once():
            try:
                self.css(selector).click()
                return True
            except StaleElementReferenceException:
                return False
        self.until(once, f"a click on {selector}")

    def fill(self, name: str, value: str, form: str = "form") -> None:
        el = self.css(f"{form} [name='{name}']")
        el.clear()
        el.send_keys(value)

    def select(self, name: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select
        Select(self.css(f"[name='{name}']")).select_by_value(value)

    def accept_confirm(self, expect: str) -> None:
        alert = self.until(lambda: self._alert(), "a confirmation dialog")
        assert expect in alert.text, alert.text
        alert.accept()

    def _alert(self):
        from selenium.common.exceptions import NoAlertPresentException
        try:
            return self.d.switch_to.alert
        except NoAlertPresentException:
            return None

    def login(self, token: str) -> None:
        self.open("/login")
        self.fill("token", token)
        self.css("#login-form button[type=submit]").click()
        self.until(lambda: self.d.execute_script("return location.hash") == "#/", "the overview after login")
        self.ready()

    def width(self, px: int, height: int = 900) -> None:
        """The viewport exactly px CSS pixels wide (device scale 1, a phone's when narrow)."""
        self.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": px, "height": height, "deviceScaleFactor": 1, "mobile": px < 500})

    def screenshot(self, path: pathlib.Path) -> pathlib.Path:
        """The whole page (not only what the window shows), at the viewport's width."""
        size = self.d.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": self.d.execute_script("return window.innerWidth"),
                     "height": min(size["height"], 8000), "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def expect_failure(self, url_part: str) -> None:
        self.expected.append(url_part)

    # -- what the browser saw -----------------------------------------------------------------------------
    def collect(self) -> None:
        """Console errors and failed requests since the last call (the driver's logs are read once)."""
        for e in self.d.get_log("browser"):
            if e["level"] == "SEVERE":
                self.console.append(e["message"])
        for e in self.d.get_log("performance"):
            m = json.loads(e["message"])["message"]
            p = m.get("params", {})
            if m["method"] == "Network.requestWillBeSent":
                self._requests[p["requestId"]] = p["request"]["url"]
            elif m["method"] == "Network.responseReceived" and p["response"]["status"] >= 400:
                self.failures.append(f"{p['response']['status']} {p['response']['url']}")
            elif m["method"] == "Network.eventSourceMessageReceived":
                self.sse.append(p["data"])
            elif m["method"] == "Network.loadingFailed" and not p.get("canceled"):
                self.failures.append(f"{p.get('errorText')} {self._requests.get(p['requestId'], '?')}")

    def problems(self) -> list[str]:
        """What went wrong, except the expected failures and ERR_NETWORK_CHANGED: Chromium aborts the requests in
        flight (an open event stream, which reconnects by itself) whenever an interface of the machine changes, and
        other tests on this machine make and remove network namespaces, veths and bridges at any moment."""
        self.collect()
        ok = lambda line: "net::ERR_NETWORK_CHANGED" in line or any(x in line for x in self.expected)  # noqa: E731
        return [f"console: {c}" for c in self.console if not ok(c)] + \
               [f"request: {f}" for f in self.failures if not ok(f)]


@pytest.fixture
def browser(srv):
    """A factory of fresh headless Chromium pages; each one's console and requests are checked at the end."""
    _prerequisites()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    made: list[Page] = []

    def make(base: str | None = None, headers: dict | None = None) -> Page:
        """base: where the service is (default: its TCP port); headers: added by the browser to every request
        (what an SSO module in front of nginx would vouch for)."""
        opts = webdriver.ChromeOptions()
        opts.accept_insecure_certs = True       # nginx's certificate in tests/deploy is self-signed
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-features=Translate,MediaRouter,OptimizationHints"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        if headers:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
        page = Page(driver, base or f"http://127.0.0.1:{srv.port}")
        made.append(page)
        return page

    yield make
    problems = []
    for page in made:
        try:
            problems += page.problems()
        finally:
            page.d.quit()
    assert not problems, "the browser saw errors:\n" + "\n".join(problems)
