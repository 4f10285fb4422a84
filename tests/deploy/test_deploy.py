"""The docker-compose deployment, run as local processes (no Docker engine runs here).

The slow test runs what the compose services run: the trainer job's script
(docker/train-and-publish.sh) into a temp bundle root, two ``recall serve`` replicas on
127.0.0.1, and a real nginx with docker/nginx.conf (only its upstream servers, listen
address and /tmp paths replaced). Then it retrains and publishes while clients drive
POST /v1/recall through nginx: no request may fail and both replicas must end on the new
bundle; then a rollback (``recall publish ROOT/<old id>``) brings both back. Its numbers
go to the log and to ``deploy.json`` in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis as redis_py
import yaml

from recall.client import RecallClient, RecallError
from recall.service.state import Event, open_store, sqlite_url
from tests.deploy.traffic import MAX_TRAFFIC_S, ready_id, recall_traffic, switch_watch
from tests.live import free_port
from tests.redis_cluster import RedisCluster
from tests.serve_process import wait_for

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
TRAIN_SCRIPT = DOCKER / "train-and-publish.sh"
NGINX_CONF = DOCKER / "nginx.conf"
HEALTHCHECK = DOCKER / "healthcheck.py"
VENV_BIN = Path(sys.executable).parent  # where the `recall` console script is
TOKEN = "deploy-test-admin-token-0123"

# Small enough for a shared 2-core machine: a few seconds per training run.
TRAIN_TOML = """\
item_dim = 16
genre_dim = 4
hidden = [32, 16]
epochs = 1
max_examples_per_user = 8
validation_users = 200
"""
SYNTH_ARGS = "--users 2000 --items 500"
RELOAD_INTERVAL_S = 0.5


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "nginx is not installed: the deployment test runs a real nginx. Install it "
            "with `apt-get install -y nginx-light` (.ci/run does this in CI)."
        )
    return found


def render_nginx_conf(upstreams: list[str], listen: str, prefix: Path) -> str:
    """docker/nginx.conf with other upstream servers, listen address and temp dir.

    The local servers are IP addresses, so nothing is left to re-resolve: their lines lose
    the `resolve` parameter and the upstream its `resolver` (neither exists before nginx
    1.27.3, and Debian's is 1.22); the `zone` and every other parameter stay."""
    text = NGINX_CONF.read_text()
    server = re.compile(r"^(\s*)server service:8000( [^;]*)?;$", re.MULTILINE)
    match = server.search(text)
    if match is None:
        raise AssertionError("docker/nginx.conf has no `server service:8000 ...;` line")
    indent, params = match.group(1), match.group(2) or ""
    params = "".join(f" {p}" for p in params.split() if p != "resolve")
    lines = "\n".join(f"{indent}server {u}{params};" for u in upstreams)
    text = server.sub(lambda _: lines, text, count=1)
    text = re.sub(r"^\s*resolver [^;]*;\n", "", text, flags=re.MULTILINE)
    text, listens = re.subn(r"listen 8080;", f"listen {listen};", text)
    if listens != 1:
        raise AssertionError("docker/nginx.conf should listen on 8080 exactly once")
    return text.replace("/tmp/", f"{prefix}/")


def test_compose_runs_what_this_test_runs() -> None:
    """The compose file's commands and wiring are the ones the slow test exercises."""
    services = _compose()["services"]
    trainer, service, nginx = services["trainer"], services["service"], services["nginx"]
    assert trainer["command"] == ["recall-train-and-publish"]
    dockerfile = (DOCKER / "Dockerfile.trainer").read_text()
    assert "COPY docker/train-and-publish.sh /usr/local/bin/recall-train-and-publish" in dockerfile
    assert "bundles:/bundles" in trainer["volumes"]
    assert service["command"] == ["recall", "serve"]
    assert "bundles:/bundles:ro" in service["volumes"]
    assert service["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert service["deploy"]["replicas"] == "${SERVICE_REPLICAS:-2}"
    assert service["environment"]["RECALL_HOST"] == "0.0.0.0"
    assert "ports" not in service  # nginx is the single entry point
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["depends_on"]["service"]["condition"] == "service_healthy"
    for name, spec in services.items():
        assert spec["read_only"] is True, name
        assert spec["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in spec["security_opt"], name
        assert spec["deploy"]["resources"]["limits"]["memory"], name
        assert any(t.startswith("/tmp:") for t in spec["tmpfs"]), name
    assert "USER 10001:10001" in (DOCKER / "Dockerfile.service").read_text()


def test_compose_redis_state() -> None:
    """The replicas and the trainer job share one Redis: pinned, AOF everysec on a named
    volume, healthy before they start, non-root, unpublished."""
    compose = _compose()
    services = compose["services"]
    redis = services["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+(\.\d+)?-alpine", redis["image"]), redis["image"]
    assert redis["user"] == "999:1000"  # the image's `redis` user, owner of /data
    command = redis["command"]
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert flags["--dir"] == "/data" and flags["--maxmemory-policy"] == "noeviction"
    assert "redis:/data" in redis["volumes"] and "redis" in compose["volumes"]
    assert "ports" not in redis
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    for name in ("service", "trainer"):
        spec = services[name]
        assert spec["environment"]["RECALL_STATE_URL"] == "redis://redis:6379/0", name
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_redis_runs_the_compose_command(tmp_path: Path) -> None:
    """The compose `redis` command line runs (Debian's redis-server) and writes its AOF
    into --dir."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (.ci/run)")
    command = [
        str(a).replace("${REDIS_MAXMEMORY:-768mb}", "64mb")
        for a in _compose()["services"]["redis"]["command"]
    ]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    data = tmp_path / "data"
    data.mkdir()
    flags.update({"--dir": str(data), "--port": str(free_port()), "--bind": "127.0.0.1"})
    argv = [server, *[x for kv in flags.items() for x in kv], "--save", ""]
    log_path = tmp_path / "redis.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = redis_py.Redis(port=int(flags["--port"]), socket_timeout=5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis_py.ConnectionError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.set("k", "v")
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert any(p.name.startswith("appendonly") for p in data.iterdir()), list(data.iterdir())
    service_image = (DOCKER / "Dockerfile.service").read_text()
    assert not re.search(r"pip install[^\n]*(torch|\[train)", service_image)


def test_nginx_re_resolves_the_replicas() -> None:
    """Scaling needs no `nginx -s reload`: the upstream re-resolves `service` through
    Docker's DNS (`resolve`, nginx >= 1.27.3, with a `zone`), and the pinned image has it.
    Debian's nginx 1.22 cannot run these lines (the tests below drop them), so this checks
    the file and the pin; the re-resolution itself runs only under Docker."""
    upstream = re.search(r"upstream recall \{(.*?)\n\s*\}", NGINX_CONF.read_text(), re.DOTALL)
    assert upstream is not None
    directives = [
        line.split("#")[0].strip() for line in upstream.group(1).splitlines() if line.strip()
    ]
    directives = [d for d in directives if d]
    assert any(re.fullmatch(r"zone recall \d+k;", d) for d in directives), directives
    assert any(re.fullmatch(r"resolver 127\.0\.0\.11 valid=\d+s;", d) for d in directives)
    (server,) = [d for d in directives if d.startswith("server ")]
    assert server.startswith("server service:8000 ") and " resolve" in server, server
    image = _compose()["services"]["nginx"]["image"]
    tag = re.fullmatch(r"nginxinc/nginx-unprivileged:(\d+)\.(\d+)(?:\.(\d+))?-alpine", image)
    assert tag is not None, image
    major, minor, patch = (int(v) if v else 0 for v in tag.groups())
    # a `1.27` tag would float to 1.27.x; require a line whose every release has `resolve`
    assert (major, minor) >= (1, 28) or (major, minor, patch) >= (1, 27, 3), image


def test_rendered_nginx_conf_is_valid(tmp_path: Path) -> None:
    nginx = _nginx_binary()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(["127.0.0.1:1", "127.0.0.1:2"], "127.0.0.1:3", tmp_path))
    rendered = conf.read_text()
    assert "server 127.0.0.1:2 max_fails=2 fail_timeout=5s;" in rendered
    directives = [line.split("#")[0] for line in rendered.splitlines()]
    assert "zone recall 64k;" in rendered
    assert not [d for d in directives if "resolve" in d]  # neither `resolve` nor `resolver`
    done = subprocess.run(
        [nginx, "-t", "-q", "-c", str(conf), "-p", f"{tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


class _Upstream:
    """A stand-in replica for the retry test, on an ephemeral 127.0.0.1 port, in a thread.

    ``answer=False``: it reads each request whole and closes the connection without an
    answer, as a replica that dies while handling it (it may have stored the events).
    ``answer=True``: it answers 200 ``{}``. Either way it records each request's path."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.paths: list[str] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            buf = b""
            try:
                while True:  # keep-alive: one request after another
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    length = next(
                        (
                            int(h.split(":", 1)[1])
                            for h in lines
                            if h.lower().startswith("content-length:")
                        ),
                        0,
                    )
                    while len(buf) < length:
                        buf += conn.recv(65536)
                    buf = buf[length:]
                    self.paths.append(lines[0].split(" ")[1])
                    if not self.answer:
                        return  # closed without an answer
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 2\r\n\r\n{}"
                    )
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def test_nginx_never_replays_an_event_batch(tmp_path: Path, processes: Processes) -> None:
    """A replica that fails after it got POST /v1/events may have stored the batch: nginx
    must not send it to another replica (the client gets 503 and decides), while reads
    (POST /v1/recall) that fail on one replica are retried on the other."""
    nginx = _nginx_binary()
    dying, healthy = _Upstream(answer=False), _Upstream(answer=True)
    try:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        lb_port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            render_nginx_conf([dying.address, healthy.address], f"127.0.0.1:{lb_port}", prefix)
        )
        lb = f"http://127.0.0.1:{lb_port}"
        proc = processes.start("nginx", [nginx, "-c", str(conf), "-p", f"{prefix}/"], {})
        body = {"events": [{"user_id": 1, "item_id": 2}]}
        deadline = time.monotonic() + 30
        statuses: list[int] = []
        # Until the dying replica got one batch (round robin: within the first two).
        while "/v1/events" not in dying.paths:
            assert time.monotonic() < deadline, "nginx sent no batch to the dying replica"
            assert proc.poll() is None, "nginx exited"
            try:
                statuses.append(httpx.post(f"{lb}/v1/events", json=body, timeout=10).status_code)
            except httpx.TransportError:
                time.sleep(0.05)  # nginx still starting
        answered = [s for s in statuses if s == 200]
        assert healthy.paths.count("/v1/events") == len(answered)
        # each batch reached exactly one replica: none was stored twice
        assert dying.paths.count("/v1/events") + len(answered) == len(statuses)
        assert statuses.count(503) == dying.paths.count("/v1/events") == 1, statuses
        failed = httpx.post(f"{lb}/v1/events", json=body, timeout=10)
        assert failed.status_code in (200, 503)
        if failed.status_code == 503:
            assert failed.json()["error"]["code"] == "no_replica"

        # Reads: the dying replica gets one (its 2nd failure; max_fails=2), nginx retries it.
        before = dying.paths.count("/v1/recall")
        for _ in range(4):
            response = httpx.post(f"{lb}/v1/recall", json={"user_id": 1, "k": 5}, timeout=10)
            assert response.status_code == 200, response.text
        assert dying.paths.count("/v1/recall") > before
    finally:
        dying.close()
        healthy.close()


# -- the slow test: trainer job, two replicas, nginx, a retrain under traffic ------------


class Processes:
    """Started processes, stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self.started.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _, proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop on SIGTERM; killing it", name)
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def _trainer_env(tmp_path: Path, root: Path, seed: int) -> dict[str, str]:
    """The trainer service's environment (docker-compose.yml), with local paths."""
    config = tmp_path / "train.toml"
    config.write_text(TRAIN_TOML)
    tmp = tmp_path / "tmp"  # the job's temp files (a merged data copy), checked for leftovers
    tmp.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RECALL_ROOT": str(root),
        "TRAINER_DATA": str(tmp_path / "data"),  # empty, as without TRAINER_DATA_DIR
        "TRAINER_WORK": str(tmp_path / "synth"),
        "TRAINER_SYNTH_ARGS": SYNTH_ARGS,
        "TRAINER_TRAIN_ARGS": f"--config {config} --seed {seed}",
        "TRAINER_KEEP": "3",
        "TMPDIR": str(tmp),
    }


def _run_trainer(tmp_path: Path, root: Path, seed: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["sh", str(TRAIN_SCRIPT)],
        env=_trainer_env(tmp_path, root, seed),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - started


@pytest.mark.slow
def test_trainer_job_trains_on_the_exported_events(tmp_path: Path) -> None:
    """The job script with RECALL_STATE_URL (a real SQLite state store): a user known only
    from events posted to the service is in the new bundle; impressions are not trained
    on. With the store unavailable the job still publishes, from the data alone."""
    root = tmp_path / "bundles"
    env = _trainer_env(tmp_path, root, seed=0)
    env["TRAINER_SYNTH_ARGS"] = "--users 300 --items 100"
    subprocess.run(  # the synthetic data the job will find (as its first run writes it)
        ["recall", "synth", "--out", env["TRAINER_WORK"], "--users", "300", "--items", "100"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    with (Path(env["TRAINER_WORK"]) / "interactions.csv").open() as f:
        rows = list(csv.DictReader(f))
    last = max(float(r["timestamp"]) for r in rows)
    items = sorted({int(r["item_id"]) for r in rows})
    new_user, shown_user = 10_000_001, 10_000_002
    url = sqlite_url(tmp_path / "state" / "events.sqlite")

    async def post() -> None:
        store = open_store(url)
        try:
            await store.add(
                [Event(new_user, items[i], last + 10 + i) for i in range(5)]
                + [Event(shown_user, items[0], last + 20, "impression")]
            )
        finally:
            await store.close()

    asyncio.run(post())

    def run_job(state_url: str) -> tuple[Path, str]:
        done = subprocess.run(
            ["sh", str(TRAIN_SCRIPT)],
            env={**env, "RECALL_STATE_URL": state_url},
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        bundle = root / (root / "CURRENT").read_text().strip()
        return bundle, done.stderr

    bundle, log = run_job(url)
    assert "plus the exported events" in log
    users = np.load(bundle / "user_ids.npy", allow_pickle=False).tolist()
    assert new_user in users and shown_user not in users
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 301, manifest["counts"]
    if manifest.get("trained_until") is not None:  # bundle schema v2: the events' last time
        assert manifest["trained_until"] == last + 14
    assert not list(Path(env["TMPDIR"]).glob("recall-data.*"))  # the merged copy is removed

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bundle, log = run_job(sqlite_url(blocker / "events.sqlite"))
    assert "state store unavailable; training on" in log
    assert new_user not in np.load(bundle / "user_ids.npy", allow_pickle=False).tolist()
    assert json.loads((bundle / "manifest.json").read_text())["counts"]["users"] == 300


def _service_env(root: Path, port: int) -> dict[str, str]:
    """The service's environment (docker-compose.yml), on 127.0.0.1 and a short poll."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RECALL_ROOT": str(root),
            "RECALL_HOST": "127.0.0.1",
            "RECALL_PORT": str(port),
            "RECALL_WORKERS": "1",
            "RECALL_RELOAD_INTERVAL_S": str(RELOAD_INTERVAL_S),
            "RECALL_SEARCH_THREADS": "2",
            "RECALL_ADMIN_TOKEN": TOKEN,
        }
    )
    return env


@pytest.mark.slow
def test_retrain_under_traffic_through_nginx(tmp_path: Path, processes: Processes) -> None:
    nginx = _nginx_binary()
    root = tmp_path / "bundles"

    first_train_s = _run_trainer(tmp_path, root, seed=0)
    old_id = (root / "CURRENT").read_text().strip()
    logger.info("trainer job: published %s in %.1f s", old_id, first_train_s)

    fleet = replicas_behind_nginx(
        processes, nginx, tmp_path / "nginx", old_id, lambda _, port: _service_env(root, port)
    )
    ports, replicas, lb = fleet.ports, fleet.urls, fleet.lb
    for port in ports:
        healthcheck = subprocess.run(
            [sys.executable, str(HEALTHCHECK)],
            env={**os.environ, "RECALL_PORT": str(port)},
            timeout=30,
        )
        assert healthcheck.returncode == 0  # the image's HEALTHCHECK command

    with RecallClient(lb, admin_token=TOKEN) as client:
        assert client.reload().bundle_id == old_id  # the admin API passes through nginx
        with pytest.raises(RecallError) as too_large:
            client.recall(history=list(range(600_000)), k=5)  # ~4.5 MB: nginx refuses it
        assert (too_large.value.status, too_large.value.code) == (413, "payload_too_large")

    users = np.load(root / old_id / "user_ids.npy", allow_pickle=False)
    items = np.load(root / old_id / "item_ids.npy", allow_pickle=False)
    with recall_traffic(lb, users[:500].tolist(), items.tolist()) as seen:
        retrain_started = time.time()
        with switch_watch(replicas, old_id) as switched:
            retrain_s = _run_trainer(tmp_path, root, seed=1)
            new_id = (root / "CURRENT").read_text().strip()
            published_at = (root / "CURRENT").stat().st_mtime  # os.replace of the new CURRENT
    both_at = max(switched.values()) if len(switched) == len(replicas) else None

    assert new_id != old_id
    assert both_at is not None, f"replicas switched: {switched}"
    during = [s for s in seen.sent if retrain_started <= s[0] <= both_at]
    access_log = (tmp_path / "nginx.log").read_text()
    per_replica = {
        u: access_log.count(f"upstream=127.0.0.1:{p} ")
        for u, p in zip(replicas, ports, strict=True)
    }
    report = {
        "retrain_seconds": round(retrain_s, 2),
        "requests_total": len(seen.sent),
        "requests_during_retrain": len(during),
        "failures": len(seen.failures),
        "publish_to_both_replicas_s": round(both_at - published_at, 3),
        "publish_to_replica_s": {u: round(t - published_at, 3) for u, t in switched.items()},
        "requests_per_replica": per_replica,
        "reload_interval_s": RELOAD_INTERVAL_S,
        "old_bundle": old_id,
        "new_bundle": new_id,
    }
    (tmp_path / "deploy.json").write_text(json.dumps(report, indent=2))
    logger.info("deployment test: %s", json.dumps(report))

    assert seen.failures == [], seen.failures[:5]
    assert len(during) > 0
    assert min(per_replica.values()) > len(seen.sent) / 10, per_replica  # both balanced
    assert {bundle for _, bundle in seen.sent} <= {old_id, new_id}
    assert seen.sent[-1][1] == new_id
    for url in replicas:
        with RecallClient(url) as replica:
            assert replica.ready() == new_id
            assert replica.model().bundle_id == new_id
    with RecallClient(lb) as client:
        assert {client.ready() for _ in range(4)} == {new_id}

    # Rollback, as the README says: publish the older bundle again; replicas follow.
    rollback = subprocess.run(
        ["recall", "publish", str(root / old_id)],
        env=_trainer_env(tmp_path, root, seed=0),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rollback.returncode == 0, rollback.stderr
    deadline = time.monotonic() + 30
    while {ready_id(url) for url in replicas} != {old_id}:
        assert time.monotonic() < deadline, "replicas did not roll back"
        time.sleep(0.05)


# -- the slow Redis test: two replicas, one Redis, nginx; Redis killed and restarted -----


@dataclass
class EventTraffic:
    """Recalls and event batches through nginx while Redis comes and goes."""

    recalls: list[tuple[int, bool]] = field(default_factory=list)  # (status, fresh)
    posts: list[tuple[int, str | None]] = field(default_factory=list)  # (status, error code)
    acked: list[tuple[int, int, float]] = field(default_factory=list)  # 200: (user, item, ts)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def recall_loop(self, url: str, users: list[int]) -> None:
        deadline = time.monotonic() + MAX_TRAFFIC_S
        with httpx.Client(base_url=url, timeout=30) as client:
            i = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                body = {"user_id": users[i % len(users)], "k": 20, "fallback": "popular"}
                i += 1
                try:
                    r = client.post("/v1/recall", json=body)
                    fresh = bool(r.json().get("fresh", True)) if r.status_code == 200 else True
                    with self.lock:
                        self.recalls.append((r.status_code, fresh))
                except httpx.HTTPError as e:
                    with self.lock:
                        self.failures.append(f"recall: {type(e).__name__}: {e}")

    def post_loop(self, url: str, user: int, items: list[int]) -> None:
        deadline = time.monotonic() + MAX_TRAFFIC_S
        base = float(int(time.time()))
        with httpx.Client(base_url=url, timeout=30) as client:
            n = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                ts = base + n / 1000  # unique per event: each one can be found again
                event = (user, items[n % len(items)], ts)
                n += 1
                body = {"events": [{"user_id": user, "item_id": event[1], "timestamp": ts}]}
                try:
                    r = client.post("/v1/events", json=body)
                except httpx.HTTPError as e:
                    with self.lock:
                        self.failures.append(f"events: {type(e).__name__}: {e}")
                    continue
                code = r.json()["error"]["code"] if r.status_code != 200 else None
                with self.lock:
                    self.posts.append((r.status_code, code))
                    if r.status_code == 200 and r.json()["accepted"] == 1:
                        self.acked.append(event)
                time.sleep(0.005)


def _exported(url: str) -> list[tuple[int, int, float]]:
    async def read() -> list[tuple[int, int, float]]:
        store = open_store(url)
        try:
            return [(int(e.user_id), int(e.item_id), e.timestamp) async for e in store.export()]
        finally:
            await store.close()

    return asyncio.run(read())


def _two_replicas_behind_nginx(
    processes: Processes, nginx: str, tmp_path: Path, root: Path, bundle_id: str, state_url: str
) -> tuple[list[str], str]:
    """Two ``recall serve`` replicas of ``root`` with RECALL_STATE_URL ``state_url`` (Redis:
    the bundle published again with it, which loads its users), behind the real nginx (its
    prefix ``tmp_path/nginx``), all ready on ``bundle_id``: (the replicas' base URLs,
    nginx's)."""
    if state_url.startswith("redis"):  # the users live in the store: publish loads them
        subprocess.run(
            [str(VENV_BIN / "recall"), "publish", str(root / bundle_id), "--state-url", state_url],
            check=True,
            timeout=120,
        )
    fleet = replicas_behind_nginx(
        processes,
        nginx,
        tmp_path / "nginx",
        bundle_id,
        lambda _, port: {**_service_env(root, port), "RECALL_STATE_URL": state_url},
    )
    return fleet.urls, fleet.lb


@dataclass
class Fleet:
    """``recall serve`` replicas on 127.0.0.1 and the nginx in front of them."""

    ports: list[int]
    urls: list[str]  # the replicas' base URLs
    procs: list[subprocess.Popen[bytes]]
    lb: str  # nginx's base URL


def replicas_behind_nginx(
    processes: Processes,
    nginx: str,
    prefix: Path,
    bundle_id: str,
    env_of: Callable[[int, int], dict[str, str]],
) -> Fleet:
    """Two ``recall serve`` replicas (replica ``i`` on a free ``port``, with environment
    ``env_of(i, port)``), each ready on ``bundle_id``, behind the real nginx (its prefix
    ``prefix``), ready on it too."""
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = []
    for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
        proc = processes.start(f"service-{i + 1}", ["recall", "serve"], env_of(i, port))
        wait_for(proc, lambda u=url: ready_id(u) == bundle_id, f"replica {url}")
        procs.append(proc)
    return Fleet(ports, urls, procs, _start_nginx(processes, nginx, prefix, ports, bundle_id))


def _start_nginx(
    processes: Processes, nginx: str, prefix: Path, ports: list[int], bundle_id: str
) -> str:
    """The real nginx with the shipped config (prefix ``prefix``) in front of the replicas
    on ``ports``, ready once it answers with ``bundle_id``; returns its base URL."""
    prefix.mkdir()
    lb_port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        render_nginx_conf([f"127.0.0.1:{p}" for p in ports], f"127.0.0.1:{lb_port}", prefix)
    )
    lb = f"http://127.0.0.1:{lb_port}"
    nginx_proc = processes.start("nginx", [nginx, "-c", str(conf), "-p", f"{prefix}/"], {})
    wait_for(nginx_proc, lambda: ready_id(lb) == bundle_id, "nginx", timeout_s=60)
    return lb


@pytest.mark.slow
def test_two_replicas_share_events_through_redis(tmp_path: Path, processes: Processes) -> None:
    """Two ``recall serve`` replicas with RECALL_STATE_URL on one real redis-server, behind
    the real nginx: an event posted through nginx moves the next recall on both replicas.
    Then Redis is SIGKILLed under traffic: every recall still answers 200 (from the bundle,
    ``"fresh": false``), events answer 503 state_unavailable; Redis restarted on its AOF:
    events are accepted again and every event that got a 200 is still there. (The AOF here
    is fsynced on every write, so the check is exact; compose's ``everysec`` may lose the
    last second, as README.md says.)"""
    from tests.redis_server import RedisServer

    nginx = _nginx_binary()
    root = tmp_path / "bundles"
    _run_trainer(tmp_path, root, seed=0)
    bundle_id = (root / "CURRENT").read_text().strip()
    users = np.load(root / bundle_id / "user_ids.npy", allow_pickle=False).tolist()
    items = np.load(root / bundle_id / "item_ids.npy", allow_pickle=False).tolist()

    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.start()
    try:
        replicas, lb = _two_replicas_behind_nginx(
            processes, nginx, tmp_path, root, bundle_id, redis.url()
        )

        # One event through nginx moves the next recall on both replicas.
        known, new = int(users[0]), int(max(users)) + 1
        before = [httpx.post(f"{u}/v1/recall", json={"user_id": known, "k": 20}) for u in replicas]
        assert {b.json()["source"] for b in before} == {"user"}
        assert httpx.post(f"{lb}/v1/recall", json={"user_id": new, "k": 20}).status_code == 404
        now = time.time()
        posted = httpx.post(
            f"{lb}/v1/events",
            json={
                "events": [
                    {"user_id": known, "item_id": items[1], "timestamp": now},
                    {"user_id": new, "item_id": items[2], "timestamp": now},
                ]
            },
        )
        assert posted.status_code == 200 and posted.json()["accepted"] == 2, posted.text
        for url, old in zip(replicas, before, strict=True):
            mine = httpx.post(f"{url}/v1/recall", json={"user_id": known, "k": 20}).json()
            assert (mine["source"], mine["fresh_events"]) == ("user+events", 1), url
            assert mine["items"] != old.json()["items"]
            theirs = httpx.post(f"{url}/v1/recall", json={"user_id": new, "k": 20}).json()
            assert (theirs["source"], theirs["fresh_events"]) == ("events", 1), url
        via_lb = [httpx.post(f"{lb}/v1/recall", json={"user_id": new, "k": 20}) for _ in range(4)]
        assert {r.json()["source"] for r in via_lb} == {"events"}

        # Redis killed under traffic, then restarted.
        traffic = EventTraffic()
        threads = [
            threading.Thread(target=traffic.recall_loop, args=(lb, [known, new]), daemon=True),
            threading.Thread(target=traffic.post_loop, args=(lb, new + 1, items[:50]), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            redis.kill()
            with traffic.lock:
                killed_at = (len(traffic.recalls), len(traffic.posts))
            time.sleep(2.0)
            with traffic.lock:
                down = (traffic.recalls[killed_at[0] :], traffic.posts[killed_at[1] :])
            redis.start()
            with traffic.lock:
                restarted_at = len(traffic.posts)
            deadline = time.monotonic() + 30
            while True:  # the replicas reconnect by themselves
                with traffic.lock:
                    after = traffic.posts[restarted_at:]
                if any(status == 200 for status, _ in after):
                    break
                assert time.monotonic() < deadline, f"no event accepted after restart: {after[-5:]}"
                time.sleep(0.1)
            time.sleep(1.0)
        finally:
            traffic.stop.set()
            for thread in threads:
                thread.join(timeout=60)

        down_recalls, down_posts = down
        assert traffic.failures == [], traffic.failures[:5]
        assert {status for status, _ in traffic.recalls} == {200}  # every recall answered
        assert down_recalls and any(not fresh for _, fresh in down_recalls)  # marked not fresh
        assert {status for status, _ in traffic.posts} <= {200, 503}
        assert (503, "state_unavailable") in down_posts
        assert all(code == "state_unavailable" for status, code in traffic.posts if status == 503)
        stored = set(_exported(redis.url()))
        lost = [e for e in traffic.acked if e not in stored]
        assert lost == [], f"{len(lost)} acknowledged events lost, e.g. {lost[:3]}"
        assert len(traffic.acked) > 10
        logger.info(
            "redis test: %d recalls, %d posts (%d acked, %d 503) while redis was down %d/%d",
            len(traffic.recalls),
            len(traffic.posts),
            len(traffic.acked),
            sum(1 for s, _ in traffic.posts if s == 503),
            len(down_recalls),
            len(down_posts),
        )
    finally:
        redis.kill()


@pytest.mark.slow
def test_two_replicas_share_events_through_a_redis_cluster(
    tmp_path: Path, processes: Processes, published_root: Path, shared_cluster: RedisCluster
) -> None:
    """Two ``recall serve`` replicas on the session's real six-node Redis Cluster
    (``redis+cluster://``), behind the real nginx: an event posted through nginx moves the
    next recall on both replicas, for a user of the bundle and for a new one."""
    shared_cluster.flush()
    nginx = _nginx_binary()
    bundle_id = (published_root / "CURRENT").read_text().strip()
    users = np.load(published_root / bundle_id / "user_ids.npy", allow_pickle=False).tolist()
    items = np.load(published_root / bundle_id / "item_ids.npy", allow_pickle=False).tolist()
    replicas, lb = _two_replicas_behind_nginx(
        processes, nginx, tmp_path, published_root, bundle_id, shared_cluster.url()
    )
    known, new = int(users[0]), int(max(users)) + 1
    before = [httpx.post(f"{u}/v1/recall", json={"user_id": known, "k": 20}) for u in replicas]
    assert {b.json()["source"] for b in before} == {"user"}
    now = time.time()
    events = [
        {"user_id": known, "item_id": items[1], "timestamp": now},
        {"user_id": new, "item_id": items[2], "timestamp": now},
    ]
    posted = httpx.post(f"{lb}/v1/events", json={"events": events})
    assert posted.status_code == 200 and posted.json()["accepted"] == 2, posted.text
    for url, old in zip(replicas, before, strict=True):
        mine = httpx.post(f"{url}/v1/recall", json={"user_id": known, "k": 20}).json()
        assert (mine["source"], mine["fresh_events"], mine["fresh"]) == ("user+events", 1, True)
        assert mine["items"] != old.json()["items"]
        theirs = httpx.post(f"{url}/v1/recall", json={"user_id": new, "k": 20}).json()
        assert (theirs["source"], theirs["fresh_events"]) == ("events", 1), url


# -- the slow availability test: two replicas, one Redis, nginx --------------------------


@dataclass
class AvailabilityWatch:
    """Answers of each replica, asked directly in a loop: (start, end (monotonic s),
    replica, whether any of the round's answers contained the watched item)."""

    item: int
    seen: list[tuple[float, float, int, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self, replica: int, url: str, user: int, probe: int) -> None:
        """Recall (popular fallback, a known user), a batch of both, and similar."""
        deadline = time.monotonic() + MAX_TRAFFIC_S
        popular = {"user_id": "nobody", "fallback": "popular", "k": 100}
        known = {"user_id": user, "k": 100, "exclude_seen": False}
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    bodies = [
                        client.post("/v1/recall", json=popular).json(),
                        client.post("/v1/recall", json=known).json(),
                        *client.post(
                            "/v1/recall/batch", json={"requests": [popular, known]}
                        ).json()["results"],
                        client.get(f"/v1/items/{probe}/similar", params={"k": 100}).json(),
                    ]
                    ids = [item["item_id"] for body in bodies for item in body["items"]]
                except (httpx.HTTPError, KeyError) as e:
                    with self.lock:
                        self.failures.append(f"replica {replica}: {type(e).__name__}: {e}")
                    continue
                with self.lock:
                    self.seen.append((started, time.monotonic(), replica, self.item in ids))

    def between(self, since: float, until: float) -> list[tuple[float, int, bool]]:
        """(start, replica, item present) of the rounds run wholly within [since, until]."""
        with self.lock:
            return [(t, r, has) for t, end, r, has in self.seen if since <= t and end <= until]

    def applied(self, since: float, until: float, present: bool) -> dict[int, float]:
        """Per replica: seconds from ``since`` to the start of its first round after
        which every round until ``until`` had the item ``present`` (or not)."""
        out: dict[int, float] = {}
        seen = self.between(since, until)
        for replica in {r for _, r, _ in seen}:
            mine = [(t, has) for t, r, has in seen if r == replica]
            wrong = [i for i, (_, has) in enumerate(mine) if has != present]
            first_ok = wrong[-1] + 1 if wrong else 0
            assert first_ok < len(mine), f"replica {replica} never applied the change"
            out[replica] = mine[first_ok][0] - since
        return out


@pytest.mark.slow
def test_availability_reaches_both_replicas_within_a_second(
    tmp_path: Path, processes: Processes
) -> None:
    """Two ``recall serve`` replicas on one redis-server behind the real nginx, each asked
    directly in a loop (recall, batch, similar): an item disabled through nginx is in no
    answer of either replica started 1 s after the POST was sent, and the measured
    propagation (first answer from which on the item stays out) is under 1 s on both;
    enabling it brings it back the same way."""
    from tests.redis_server import RedisServer

    nginx = _nginx_binary()
    root = tmp_path / "bundles"
    _run_trainer(tmp_path, root, seed=0)
    bundle_id = (root / "CURRENT").read_text().strip()
    users = np.load(root / bundle_id / "user_ids.npy", allow_pickle=False).tolist()

    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        replicas, lb = _two_replicas_behind_nginx(
            processes, nginx, tmp_path, root, bundle_id, redis.url()
        )

        popular = httpx.post(
            f"{lb}/v1/recall", json={"user_id": "nobody", "fallback": "popular", "k": 2}
        ).json()
        item, probe = (i["item_id"] for i in popular["items"])
        watch = AvailabilityWatch(item)
        threads = [
            threading.Thread(target=watch.loop, args=(j, url, int(users[0]), probe), daemon=True)
            for j, url in enumerate(replicas)
        ]
        for thread in threads:
            thread.start()
        admin = RecallClient(lb, admin_token=TOKEN)
        try:
            time.sleep(1.0)
            disabled_at = time.monotonic()
            assert admin.set_availability(disable=[item]).unknown == []
            time.sleep(2.5)
            enabled_at = time.monotonic()
            assert admin.set_availability(enable=[item]).unknown == []
            time.sleep(2.5)
            ended_at = time.monotonic()
        finally:
            watch.stop.set()
            for thread in threads:
                thread.join(timeout=60)
            admin.close()

        assert watch.failures == [], watch.failures[:5]
        before = [has for _, _, has in watch.between(0, disabled_at)]
        late_off = [(r, has) for _, r, has in watch.between(disabled_at + 1, enabled_at)]
        late_on = [(r, has) for _, r, has in watch.between(enabled_at + 1, ended_at)]
        timeline = [(round(t - disabled_at, 3), r, has) for t, r, has in watch.between(0, 1e12)]
        (tmp_path / "availability.json").write_text(json.dumps(timeline))  # for a failure
        assert before and all(before)  # the item was in the answers to begin with
        assert {r for r, _ in late_off} == {0, 1}
        assert not any(h for _, h in late_off)  # 1 s after the POST: in no answer
        assert {r for r, _ in late_on} == {0, 1}
        assert all(h for _, h in late_on)
        off = watch.applied(disabled_at, enabled_at, present=False)
        on = watch.applied(enabled_at, ended_at, present=True)
        logger.info(
            "availability propagation (s from the POST through nginx): disable %s, enable %s; "
            "%d answers",
            {r: round(s, 3) for r, s in off.items()},
            {r: round(s, 3) for r, s in on.items()},
            len(watch.seen),
        )
        print(
            "availability propagation (s): disable "
            + ", ".join(f"replica {r} {v:.3f}" for r, v in sorted(off.items()))
            + "; enable "
            + ", ".join(f"replica {r} {v:.3f}" for r, v in sorted(on.items()))
        )
        assert max(off.values()) < 1.0 and max(on.values()) < 1.0
    finally:
        redis.kill()
