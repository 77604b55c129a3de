"""A real Redis for the cluster tests (a pytest plugin, named in conftest.py).

``redis_url`` (session): ``REDIS_URL`` if set, else ``redis://127.0.0.1:6379`` if a
Redis answers there, else a ``redis-server`` started on a free port for the session
(no persistence). With none of them the test is skipped, saying why; under
``CI=true`` it fails instead, so a CI machine without Redis cannot pass by skipping.

``redis_namespace``: a namespace of its own per test, its keys deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import redis
except ImportError:  # the redis extra is not installed: every Redis test says so
    redis = None

_LOCAL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _unavailable(reason: str) -> None:
    print(f"\n[redis] {reason}", file=sys.stderr)
    if os.environ.get("CI") == "true":
        pytest.fail(f"a Redis test cannot be skipped under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis to test against (see the module docstring)."""
    if redis is None:
        _unavailable("redis-py is not installed (pip install 'poller[redis]')")
    given = os.environ.get("REDIS_URL")
    if given:
        if not _answers(given):
            _unavailable("REDIS_URL is set but that Redis does not answer")
        yield given
        return
    if _answers(_LOCAL):
        yield _LOCAL
        return
    server = shutil.which("redis-server")
    if server is None:
        _unavailable("no REDIS_URL, no Redis on 127.0.0.1:6379, no redis-server on PATH")
    port = _free_port()
    folder: Path = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                _unavailable(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A namespace for one test; its keys are deleted after it."""
    namespace = f"t{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
