"""Screenshots of the console for the README: ``.venv/bin/python docs/screenshots.py``.

Serves the demo bundle (``runs/demo/bundles``; ``recall demo --no-serve`` makes it when it is
missing) on 127.0.0.1 with an empty state store of its own, sends some traffic, and opens
each console page in headless chromium (tests/browser.py: Debian's binary, every request
beyond 127.0.0.1 refused) at a laptop size, 1366x850 CSS pixels. Writes
``docs/console-{model,user,builder,live}.png``; fails if a page logged an error or reached
beyond 127.0.0.1.

``docs/console-experiment.png`` is a small run of ``bench/experiment_replay.py``'s protocol
on synthetic data (``runs/demo/experiment``: 1,500 users, 800 items): two bundles trained
on the first 80% by time (all of it, and a random half of it), an experiment with the half
one at share 0.5, and the later interactions replayed (recall, then the event) while the
page polls ``/v1/experiment``, with live counts in 2-second buckets.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.experiment_replay import prepare, replay, start_experiment  # noqa: E402
from bench.freshness import read_interactions, split_at_quantile  # noqa: E402
from recall.service.app import create_app  # noqa: E402
from recall.trainer.synth import SynthConfig, write_synthetic  # noqa: E402
from tests.browser import Browser, Tab, open_browser  # noqa: E402
from tests.live import live_server, settings  # noqa: E402

logger = logging.getLogger("screenshots")

DEMO = REPO / "runs" / "demo"
USER = 196
"""The user the README's examples use."""
BUILDER_TITLES = 2
"""Items picked in the new-user builder (the first search hit of each title)."""


def demo_root(workdir: Path) -> Path:
    """The demo's bundle root, running ``recall demo --no-serve`` first when it has none."""
    root = workdir / "bundles"
    if not (root / "CURRENT").exists():
        logger.info("no demo bundle under %s: running recall demo --no-serve", root)
        recall = Path(sys.executable).with_name("recall")
        subprocess.run([str(recall), "demo", "--no-serve", "--workdir", str(workdir)], check=True)
    return root


def traffic(url: str, seconds: float) -> None:
    """Recall, similar and a few bad requests for ``seconds``: the live page's numbers."""
    end = time.monotonic() + seconds
    n = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < end:
            client.post("/v1/recall", json={"user_id": USER + n % 50, "k": 20})
            client.get(f"/v1/items/{1 + n % 500}/similar", params={"k": 10})
            if n % 10 == 0:
                client.post("/v1/recall", json={"user_id": "nobody", "k": 10})  # a 404
            n += 1
            time.sleep(0.005)


def shoot(tab: Tab, path: Path, full_page: bool = False) -> None:
    """Screenshot the page (the viewport, or all of it); fails if it logged an error or
    left 127.0.0.1."""
    tab.page.wait_for_load_state("networkidle")
    tab.page.wait_for_timeout(500)  # charts drawn after the last fetch
    tab.page.screenshot(path=str(path), full_page=full_page)
    if tab.problems():
        raise SystemExit(f"{path.name}: " + "; ".join(tab.problems()))
    logger.info("wrote %s", path)


def screenshots(browser: Browser, url: str, client: httpx.Client, out: Path) -> None:
    with browser.tab() as tab:
        tab.page.goto(f"{url}/console#/model")
        tab.page.get_by_test_id("training-curve").wait_for()
        shoot(tab, out / "console-model.png", full_page=True)
    with browser.tab() as tab:
        tab.page.goto(f"{url}/console#/user/{USER}")
        tab.page.get_by_test_id("recalled-items").locator("[data-item-id]").first.wait_for()
        shoot(tab, out / "console-user.png")
    with browser.tab() as tab:
        tab.page.goto(f"{url}/console#/user")
        for item_id in (50, 121)[:BUILDER_TITLES]:
            title = client.get(f"/v1/items/{item_id}").json()["attributes"]["title"]
            tab.page.get_by_test_id("item-search").fill(title)
            tab.page.get_by_test_id("item-search").press("Enter")
            hit = tab.page.locator(f"[data-testid=search-results] [data-item-id='{item_id}']")
            hit.first.click()
        tab.page.get_by_test_id("recalled-items").locator("[data-item-id]").first.wait_for()
        shoot(tab, out / "console-builder.png")
    with browser.tab() as tab:
        tab.page.goto(f"{url}/console#/live")
        # traffic from another thread: this one keeps serving the page's routed requests
        sender = threading.Thread(target=traffic, args=(url, 12.0))
        sender.start()
        tab.page.wait_for_timeout(11_000)  # a few polls of /metrics, 2.5 s apart
        tab.page.get_by_test_id("live-rps-total").wait_for()
        shoot(tab, out / "console-live.png")
        sender.join()


EXPERIMENT_DATA = SynthConfig(n_users=1500, n_items=800, seed=0)
EXPERIMENT_EVENTS = 2500
"""Later interactions the experiment screenshot replays (about half a minute)."""


def experiment_screenshot(browser: Browser, workdir: Path, out: Path) -> None:
    """``console-experiment.png``: the replay of the module docstring, the page polling."""
    data = workdir / "experiment" / "data"
    if not (data / "interactions.csv").exists():
        write_synthetic(data, EXPERIMENT_DATA)
    train_rows, later, _ = split_at_quantile(read_interactions(data / "interactions.csv"), 0.8)
    root, bundles, _ = prepare(workdir / "experiment", data, train_rows, seed=0, epochs=3)
    start_experiment(root, bundles, share=0.5, seed=0)
    app = create_app(settings(root, max_k=500, live_bucket_s=2))
    with live_server(app) as url, browser.tab() as tab:
        tab.page.goto(f"{url}/console#/experiment")
        sender = threading.Thread(target=replay, args=(url, later[:EXPERIMENT_EVENTS]))
        sender.start()
        sender.join()
        tab.page.wait_for_timeout(6_000)  # the next poll
        tab.page.get_by_test_id("experiment-chart").wait_for()
        shoot(tab, out / "console-experiment.png", full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEMO, help="the demo's directory")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where PNGs go")
    parser.add_argument(
        "--only-experiment", action="store_true", help="console-experiment.png alone"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.only_experiment:
        with open_browser() as browser:
            experiment_screenshot(browser, args.workdir, args.out)
        return 0
    root = demo_root(args.workdir)
    with (
        live_server(create_app(settings(root, max_k=500))) as url,
        httpx.Client(base_url=url, timeout=30) as client,
        open_browser() as browser,
    ):
        traffic(url, 1.0)
        screenshots(browser, url, client, args.out)
        experiment_screenshot(browser, args.workdir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
