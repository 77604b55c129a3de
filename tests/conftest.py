"""Shared fixtures: the anyio backend (asyncio only: aiohttp needs it) and the simulator."""

from __future__ import annotations

import pytest

pytest_plugins = ["poller.testing.pytest_plugin"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
