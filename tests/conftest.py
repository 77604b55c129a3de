"""Shared fixtures: the anyio backend (asyncio only: aiohttp needs it)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

pytest_plugins = ["poller.testing.pytest_plugin"]
