"""A real ``moto_server`` process (moto's standalone S3 emulator, from the dev extra) on a
free loopback port, for the tests of ``s3://`` roots. It keeps objects in memory: ``kill``
loses them, ``start`` again serves an empty store on the same port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import free_port

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
BUCKET = "recall-test"
#: What boto3 needs to talk to the emulator (moto accepts any credentials).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """One ``moto_server`` on 127.0.0.1; :meth:`env` is what a process needs to use it."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        if not MOTO_SERVER.exists():
            pytest.fail(f"{MOTO_SERVER} is missing: install the dev extra (`make setup`)")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text()
                    raise RuntimeError(f"moto_server did not start: {log}") from None
                time.sleep(0.05)
        self.client().create_bucket(Bucket=BUCKET)

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-request, as a crashed or partitioned one."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@contextmanager
def moto_server(log: Path) -> Iterator[MotoServer]:
    server = MotoServer(log)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def s3_environment(server: MotoServer) -> Iterator[None]:
    """``os.environ`` pointing boto3 at ``server`` for the block (in-process S3 roots)."""
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
