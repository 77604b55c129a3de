"""Log lines: human or JSON, and never a secret."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import msgspec
import pytest

from poller.daemon.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_with_extra_fields_and_masked_secrets() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", level="info", secrets=["rt_live_SECRET", "zz_tok_zz"], stream=out)
    log = logging.getLogger("poller.daemon.test")
    log.info("key %s in use", "rt_live_SECRET", extra={"url": "http://127.0.0.1:1"})
    log.debug("not shown")
    try:
        raise ValueError("token zz_tok_zz leaked")
    except ValueError:
        log.exception("failed")
    lines = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["message"] == "key *** in use"
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "poller.daemon.test"
    assert lines[0]["url"] == "http://127.0.0.1:1"
    assert "token *** leaked" in lines[1]["exc"]
    assert "rt_live_SECRET" not in out.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_human_lines_and_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(fmt="human", level="warning", secrets=["s3cr3t"], stream=second)
    logging.getLogger("poller").warning("the s3cr3t is out")
    assert first.getvalue() == ""
    line = second.getvalue().strip()
    assert line.endswith("WARNING poller: the *** is out")
    assert line[4] == "-" and line[23] == "Z"  # 2024-05-01T12:00:00.123Z
