"""Shared fixtures: the anyio backend (asyncio only: aiohttp needs it) and the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import self_signed_cert

pytest_plugins = ["poller.testing.pytest_plugin", "_redis_server"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (skips without openssl)."""
    files = self_signed_cert(tmp_path_factory.mktemp("tls"))
    if files is None:
        pytest.skip("openssl is not installed")
    return files
