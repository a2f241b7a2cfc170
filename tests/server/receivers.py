"""Real receivers of metasched's events, on loopback: an HTTP server that checks each webhook's signature (and can
be told to fail its first N deliveries), and an SMTP server (aiosmtpd) that keeps the mails it gets."""
from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import http.server
import json
import threading
import time

import pytest


class WebhookReceiver:
    """POSTs to /<anything>: checks X-Metasched-Signature with the secret of that path, answers 500 to the first
    ``fail_first`` deliveries (of any path), then 200. Keeps every delivery (raw) and the events by id."""

    def __init__(self, secrets: dict[str, str], fail_first: int = 0, gate: threading.Event | None = None):
        """gate: while it is not set, every delivery is received (and kept) but its answer waits for it."""
        self.secrets = secrets
        self.fail_first = fail_first
        self.gate = gate
        self.lock = threading.Lock()
        self.deliveries: list[dict] = []       # every POST: path, event id header, signature ok, status answered
        self.bad_signatures: list[dict] = []
        self.events: dict[str, dict[int, dict]] = {}     # path -> event id -> body (dedup by id)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path
                secret = receiver.secrets.get(path, "")
                want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                sig_ok = hmac.compare_digest(want, self.headers.get("X-Metasched-Signature", ""))
                with receiver.lock:
                    n = len(receiver.deliveries)
                    status = 500 if n < receiver.fail_first else 200
                    doc = json.loads(body)
                    entry = {"path": path, "event_id": self.headers.get("X-Metasched-Event-Id"), "sig_ok": sig_ok,
                             "status": status, "body": doc}
                    receiver.deliveries.append(entry)
                    if not sig_ok:
                        receiver.bad_signatures.append(entry)
                    elif status == 200:
                        receiver.events.setdefault(path, {})[doc["id"]] = doc
                if receiver.gate is not None:
                    receiver.gate.wait(120)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str) -> dict[int, dict]:
        with self.lock:
            return dict(self.events.get(path, {}))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class MailReceiver:
    """An SMTP server (aiosmtpd) on loopback keeping every message it accepts."""

    def __init__(self):
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            pytest.fail("aiosmtpd is missing: pip install 'metasched[test]' (or pip install aiosmtpd)")
        self.lock = threading.Lock()
        self.messages: list[email.message.EmailMessage] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                               policy=email.policy.default)
                with receiver.lock:
                    receiver.messages.append(msg)
                return "250 OK"

        from .conftest import free_port
        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def got(self) -> list:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.controller.stop()


def wait_for(what: str, fn, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
