"""SimServer: the thin aiohttp shell that serves a JobsSimulator on a real socket.

The shell only does I/O: it reads a request, asks the pure model for the answer
at the current time, then waits (``slow``), aborts the connection (``reset``) or
writes the answer. Closing the server wakes every delayed answer, aborts its
connection, and returns once aiohttp has shut down: nothing is left running.
"""

from __future__ import annotations

__all__ = ["SimServer"]

import asyncio
import contextlib
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from ._model import JobsSimulator

# Handlers end at once when the server closes (see _delay), so this bound only
# matters for a client stuck sending its request.
_SHUTDOWN_TIMEOUT_S: Final = 1.0


class SimServer:
    """Serve ``sim`` over HTTP on ``host:port`` (port 0 picks a free port).

    Use it as an async context manager::

        async with SimServer(sim) as server:
            ...  # requests to server.base_url

    It listens on the loopback interface unless told otherwise.
    """

    def __init__(
        self, sim: JobsSimulator | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.sim = sim if sim is not None else JobsSimulator()
        self.host = host
        self._requested_port = port
        self._runner: web.ServerRunner | None = None
        self._closing = asyncio.Event()

    @property
    def port(self) -> int:
        """The port the server listens on. Raises ``RuntimeError`` before it starts."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the server is not running")
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def base_url(self) -> str:
        """The URL to give a client, such as ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind the socket and start serving. Raises ``OSError`` if the port is taken."""
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        self._closing = asyncio.Event()
        runner = web.ServerRunner(
            web.Server(self._handle, access_log=None), shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def close(self) -> None:
        """Stop serving: delayed answers end with a reset, connections close. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        answer = self.sim.handle(
            request.method, request.raw_path, headers=request.headers, body=body
        )
        if answer.reset or (answer.delay_s > 0 and not await self._delay(answer.delay_s)):
            if request.transport is not None:
                # abort() drops the connection without a FIN handshake: the client sees
                # a reset / "server disconnected", never a response.
                request.transport.abort()
            # aiohttp needs a return value; with the transport gone, it is never sent.
            return web.Response(status=499)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def _delay(self, delay_s: float) -> bool:
        """Sleep ``delay_s``, or less if the server closes meanwhile. True if still open."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._closing.wait()
        return not self._closing.is_set()
