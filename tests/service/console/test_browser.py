"""The browser harness itself (tests/browser.py): what the console tests assert absent
(requests leaving 127.0.0.1, console errors, uncaught page errors) is really caught."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, chromium_binary

PAGE = """<!doctype html><html><body><h1 id="title">local</h1>
<img src="https://cdn.example.com/lib.png"><img src="/local.png">
<script>console.error("logged"); setTimeout(() => { throw new Error("thrown"); }, 0);</script>
</body></html>"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr."""


@pytest.fixture(scope="module")
def static_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving :data:`PAGE` as /index.html."""
    root: Path = tmp_path_factory.mktemp("static")
    (root / "index.html").write_text(PAGE)
    (root / "clean.html").write_text("<!doctype html><html><body><p>clean</p></body></html>")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_harness_records_external_requests_and_errors(
    browser: Browser, static_url: str
) -> None:
    with browser.tab() as tab:
        tab.page.goto(f"{static_url}/index.html")
        assert tab.page.get_by_text("local").is_visible()
        tab.page.wait_for_function("() => document.readyState === 'complete'")
        tab.page.wait_for_timeout(200)  # the thrown error runs in a later task
    assert tab.blocked == ["https://cdn.example.com/lib.png"]
    assert any(text.startswith("logged") for text in tab.console_errors)
    assert any("/local.png" in text for text in tab.console_errors)  # the 404
    assert tab.page_errors == ["thrown"]
    assert len(tab.problems()) == len(tab.console_errors) + 2


def test_a_clean_page_has_no_problems(browser: Browser, static_url: str) -> None:
    with browser.tab() as tab:
        tab.page.goto(f"{static_url}/clean.html")
        assert tab.page.get_by_text("clean").is_visible()
    assert tab.problems() == []


def test_without_chromium_the_browser_tests_fail_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("tests.browser.CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        chromium_binary()
