"""Run ``wrk`` (Debian's wrk 4.1) against ``POST /v1/recall`` and parse its result.

The Lua script is kept here (written to a temp file per run) so the benchmark is one
Python entry point. Each request asks for a uniformly random known user id
(``first_user .. first_user + n_users - 1``) with ``k`` items; ``exclude_seen`` keeps the
server default (on) unless ``extra`` adds fields. ``delay_ms`` > 0 makes each connection
wait that long after each response (wrk 4 ``delay()``): with ``c`` connections the rate
is at most ``c / (latency + delay)``, a crude way to hold a moderate rate without wrk2's ``-R``.
The latencies are wrk's (send to last byte, microseconds), from a closed loop, so they
do not include time a request would have waited in an open-loop queue.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.wrk")

RECALL_LUA = r"""
local n_users = tonumber(os.getenv("BENCH_USERS"))
local first_user = tonumber(os.getenv("BENCH_FIRST_USER") or "0")
local k = tonumber(os.getenv("BENCH_K") or "100")
local extra = os.getenv("BENCH_EXTRA") or ""
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local get_path = os.getenv("BENCH_GET_PATH") or ""
local headers = {["Content-Type"] = "application/json"}
local thread_id = 0

setup = function(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

init = function(args)
  math.randomseed(os.time() * 1000 + (tid or 0))
end

request = function()
  if get_path ~= "" then
    return wrk.format("GET", get_path)
  end
  local user = first_user + math.random(0, n_users - 1)
  local body = '{"user_id":' .. user .. ',"k":' .. k .. extra .. '}'
  return wrk.format("POST", "/v1/recall", headers, body)
end

if delay_ms > 0 then
  delay = function() return delay_ms end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float  # CPU seconds wrk itself used (it shares the 2 cores)
    server_cpu_s: float | None = None  # CPU seconds of the server's processes, if measured

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "p999_ms": round(self.p999_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "errors": self.errors,
            "client_cpu_s": round(self.client_cpu_s, 2),
        }
        if self.server_cpu_s is not None:
            out["server_cpu_s"] = round(self.server_cpu_s, 2)
            out["server_cpu_ms_per_request"] = round(
                1e3 * self.server_cpu_s / max(self.requests, 1), 3
            )
        return out


def run_wrk(
    url: str,
    *,
    n_users: int,
    seconds: float,
    connections: int,
    first_user: int = 0,
    threads: int = 1,
    k: int = 100,
    delay_ms: float = 0.0,
    extra: str = "",
    timeout_s: float = 5.0,
    get_path: str = "",
) -> WrkResult:
    """One bounded wrk run; raises RuntimeError if wrk fails or prints no result.

    ``get_path``: GET that path instead of the recall POST (the HTTP floor, /healthz)."""
    with tempfile.TemporaryDirectory(prefix="recall-wrk-") as tmp:
        script = Path(tmp) / "recall.lua"
        script.write_text(RECALL_LUA)
        env = {
            **os.environ,
            "BENCH_USERS": str(n_users),
            "BENCH_FIRST_USER": str(first_user),
            "BENCH_K": str(k),
            "BENCH_EXTRA": extra,
            "BENCH_DELAY_MS": f"{delay_ms:g}",
            "BENCH_GET_PATH": get_path,
        }
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(script),
            url,
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    lat = data["latency_us"]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors={k: int(v) for k, v in data["errors"].items()},
        p50_ms=lat["p50"] / 1e3,
        p90_ms=lat["p90"] / 1e3,
        p99_ms=lat["p99"] / 1e3,
        p999_ms=lat["p999"] / 1e3,
        mean_ms=lat["mean"] / 1e3,
        max_ms=lat["max"] / 1e3,
        client_cpu_s=cpu,
    )
