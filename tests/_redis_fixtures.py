"""Fixtures for tests against a real Redis (a pytest plugin, enabled in conftest.py).

``redis_url`` (session): ``REDIS_URL`` if set, else ``redis://127.0.0.1:6379`` if it
answers, else a ``redis-server`` from PATH started on a free port with no persistence
for the session. Only when none of these exists do the tests that use it skip, saying
why; under ``CI=true`` such a skip fails the run instead (see
:func:`pytest_runtest_makereport`): CI must run them.

``redis_ns``: a namespace of its own for one test; its keys are deleted afterwards.
``script_client``: the coordinator's script client on ``redis_url``.

``private_redis``: a ``redis-server`` of the test's own on a free port, which the test
may kill, restart (empty: no persistence) and pause; it needs ``redis-server`` on PATH
whatever ``REDIS_URL`` says, so a CI that sets only ``REDIS_URL`` fails the fault tests
(they skip, and ``CI=true`` makes a skip a failure): give CI ``redis-server``.
``DelayProxy`` adds latency between a client and a server, or silences connections.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis

from poller.redis._client import ScriptClient

_REDIS_FIXTURES = frozenset({"redis_url", "redis_ns", "private_redis", "script_client"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


class RedisServer:
    """A ``redis-server`` child process on ``port``, keeping nothing on disk."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, empty) and wait until it answers."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self._debug_option(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while not _answers(self.url):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def _debug_option(self) -> list[str]:
        """``DEBUG SLEEP`` (a paused server) needs leave from Redis 7 on."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        major = out.split("v=", 1)[-1].split(".", 1)[0]
        return ["--enable-debug-command", "local"] if major.isdigit() and int(major) >= 7 else []

    def kill(self) -> None:
        """Kill it at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self) -> Any:
        """A synchronous redis-py client (the test closes it)."""
        return redis.Redis.from_url(self.url, socket_timeout=5)


def _redis_binary() -> str | None:
    return shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis to test against (see the module docstring)."""
    env = os.environ.get("REDIS_URL")
    if env:
        if not _answers(env):
            pytest.fail("REDIS_URL is set but that Redis does not answer")
        yield env
        return
    default = "redis://127.0.0.1:6379/0"
    if _answers(default):
        yield default
        return
    binary = _redis_binary()
    if binary is None:
        pytest.skip("no Redis: REDIS_URL unset, nothing on 127.0.0.1:6379, no redis-server")
    with tempfile.TemporaryDirectory(prefix="poller-redis-") as tmp:
        server = RedisServer(binary, _free_port(), Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.kill()


@pytest.fixture
def redis_ns(redis_url: str) -> Iterator[str]:
    """A fresh namespace; every key under it is deleted after the test."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, running; killed at the end."""
    binary = _redis_binary()
    if binary is None:
        pytest.skip("redis-server is not on PATH: the fault tests need one of their own")
    server = RedisServer(binary, _free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def script_client(redis_url: str) -> AsyncIterator[ScriptClient]:
    """The coordinator's script client, on ``redis_url``, with a generous timeout."""
    client = ScriptClient(redis_url, timeout_s=2.0)
    try:
        yield client
    finally:
        await client.aclose()


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk ``delay_s`` before passing it on
    (both ways): a slow network between a client and ``target_port``. :meth:`cut` makes
    the connections open at that moment silent (nothing passes, nothing closes), as
    half-open TCP connections are; new ones pass again, unless ``refusing`` (closed at
    once: the server is out of reach).

    Every task belongs to the proxy's task group; each direction of a connection holds
    at most ``_BUFFERED`` chunks in flight (the reader waits when it is full)."""

    _BUFFERED = 64

    def __init__(self, target_port: int, delay_s: float = 0.0) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self.refusing = False
        self._cuts = 0
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Silence every connection open now."""
        self._cuts += 1

    async def __aenter__(self) -> DelayProxy:
        async with contextlib.AsyncExitStack() as stack:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
            stack.push_async_callback(listener.aclose)
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(listener.serve, self._serve)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        born = self._cuts
        async with client:
            if self.refusing:
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, client, upstream, born)
                tg.start_soon(self._pipe, upstream, client, born)

    async def _pipe(
        self, source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, born: int
    ) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[float, bytes]](self._BUFFERED)

        async def forward() -> None:
            async with receive:
                async for due, chunk in receive:
                    await anyio.sleep(max(0.0, due - time.monotonic()))
                    if self._cuts > born:
                        await anyio.sleep_forever()  # silent, not closed: half-open
                    if not chunk:
                        await sink.send_eof()
                        return
                    await sink.send(chunk)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(forward)
                async with send:
                    while True:
                        try:
                            chunk = await source.receive(65536)
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            chunk = b""
                        await send.send((time.monotonic() + self.delay_s, chunk))
                        if not chunk:
                            return
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` a Redis test that skips fails: CI must run them."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("CI", "").lower() != "true":
        return
    if _REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a Redis test skipped under CI=true: {reason}"


@pytest.fixture
def redis_namespace(redis_ns: str) -> str:
    """The cluster tests' name for :func:`redis_ns`."""
    return redis_ns
