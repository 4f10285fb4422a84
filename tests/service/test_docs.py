"""``/docs`` works with no internet: every asset it references is served by the app itself."""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from recall.service.app import create_app
from recall.service.settings import Settings
from tests.deploy.test_wheel import build_wheel
from tests.live import live_server

# Every URL-ish reference in the page: attributes, and the strings in its inline script.
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")
ANY_URL = re.compile(r"""(?:https?:)?//[^\s"'<>]+""")
# content type and the least size of a real file of each kind
EXPECTED = {".js": ("javascript", 100_000), ".css": ("text/css", 10_000), ".png": ("image/", 100)}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("docs-root")  # no bundle needed for the docs
    app = create_app(Settings(root=root, reload_interval_s=0))
    with live_server(app) as url:
        yield url


def _references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(html)]


def test_docs_page_references_only_this_host(base_url: str) -> None:
    response = httpx.get(f"{base_url}/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "SwaggerUIBundle" in html
    assert ANY_URL.findall(html) == []  # no absolute or protocol-relative URL at all
    refs = _references(html)
    assert {urlsplit(r).path.rsplit(".", 1)[-1] for r in refs} >= {"js", "css", "png", "json"}
    assert all(r.startswith("/") for r in refs), refs


def test_every_docs_asset_is_served(base_url: str) -> None:
    html = httpx.get(f"{base_url}/docs").text
    with httpx.Client() as client:
        for ref in _references(html):
            url = urljoin(f"{base_url}/docs", ref)
            assert urlsplit(url).netloc == urlsplit(base_url).netloc
            response = client.get(url)
            assert response.status_code == 200, ref
            suffix = Path(urlsplit(url).path).suffix
            if suffix == ".json":  # the OpenAPI document the page renders
                assert response.json()["info"]["title"] == "recall"
                continue
            kind, least = EXPECTED[suffix]
            assert kind in response.headers["content-type"], (ref, response.headers)
            assert len(response.content) >= least, ref


def test_redoc_is_off_rather_than_from_a_cdn(base_url: str) -> None:
    assert httpx.get(f"{base_url}/redoc").status_code == 404


def test_the_image_build_carries_the_assets(tmp_path: Path) -> None:
    """The service image installs the wheel its build stage makes from these COPYs: the
    wheel must hold the assets (package data in pyproject.toml)."""
    repo = Path(__file__).resolve().parents[2]
    dockerfile = (repo / "docker" / "Dockerfile.service").read_text()
    src = tmp_path / "src"
    src.mkdir()
    build_stage = dockerfile.split("\nFROM ")[1]  # `COPY service/ service/` etc.
    for line in re.findall(r"^COPY ([^\n]+)$", build_stage, re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            path = repo / source.rstrip("/")
            if path.is_dir():
                shutil.copytree(
                    path,
                    src / path.name,
                    ignore=shutil.ignore_patterns("__pycache__"),
                    symlinks=True,
                )
            else:
                shutil.copy(path, src / path.name)
    wheel = build_wheel(src, tmp_path / "wheels")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"):
        assert f"recall/service/static/swagger-ui/{asset}" in names
    console = ("index.html", "console.css", "console.js", "api.js", "dom.js", "charts.js")
    pages = (
        "model.js",
        "user.js",
        "builder.js",
        "item.js",
        "recall-panel.js",
        "live.js",
        "prom.js",
    )
    for asset in (*console, *pages):
        assert f"recall/service/console/{asset}" in names
