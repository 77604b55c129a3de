"""PollerOptions: one frozen, self-checking value for every engine setting, taken by
Poller and BlockingPoller, whole or as keyword arguments."""

from __future__ import annotations

import math
import typing
from typing import Any

import msgspec
import pytest
from _helpers import MemoryTransport

from poller import (
    AiohttpTransport,
    AuthScheme,
    Backoff,
    ConfigError,
    Poller,
    PollerOptions,
    PollerSettings,
    RateLimit,
)


def test_the_defaults_are_the_engines() -> None:
    options = PollerOptions()
    assert options.max_connections == 64
    assert options.request_timeout_s == 10.0
    assert options.auth_scheme is AuthScheme.API_KEY
    assert options.backoff == Backoff()
    assert options.first_poll_rate_per_s == 1000.0
    assert options.terminal_retention_s == 3600.0
    assert (options.subscriber_buffer, options.callback_concurrency) == (10_000, 16)
    assert options.callback_queue_size == 10_000
    assert (options.rate_limit, options.org_rate_limits, options.max_rate_per_s) == (None, {}, None)
    assert (options.insecure_skip_tls_verify, options.seed, options.learned_durations) == (
        False,
        None,
        None,
    )


def test_the_keyword_arguments_are_exactly_the_fields() -> None:
    assert set(typing.get_type_hints(PollerSettings)) == set(PollerOptions.__struct_fields__)


def test_frozen_and_free_of_secrets() -> None:
    options = PollerOptions(auth_scheme="bearer", rate_limit=RateLimit(5))
    with pytest.raises(AttributeError):
        options.max_connections = 2  # type: ignore[misc]
    assert options.auth_scheme is AuthScheme.BEARER
    assert not {"api_key", "access_token"} & set(PollerOptions.__struct_fields__)
    assert msgspec.json.decode(msgspec.json.encode(PollerOptions()))["max_connections"] == 64


BAD = [
    ("max_connections", 0),
    ("max_connections", True),
    ("max_connections", 1.5),
    ("max_connections", "4"),
    ("request_timeout_s", 0),
    ("request_timeout_s", math.nan),
    ("request_timeout_s", math.inf),
    ("request_timeout_s", True),
    ("auth_scheme", "basic"),
    ("backoff", {"learn": False}),
    ("rate_limit", 5),
    ("org_rate_limits", {"org_a": 5}),
    ("org_rate_limits", [RateLimit(5)]),
    ("max_rate_per_s", 0),
    ("max_rate_per_s", math.inf),
    ("max_rate_per_s", True),
    ("first_poll_rate_per_s", 0),
    ("first_poll_rate_per_s", math.nan),
    ("terminal_retention_s", -1),
    ("terminal_retention_s", None),
    ("subscriber_buffer", 0),
    ("subscriber_buffer", True),
    ("callback_concurrency", 0),
    ("callback_queue_size", 0),
    ("insecure_skip_tls_verify", 1),
    ("seed", "abc"),
    ("seed", True),
    ("learned_durations", {"kinds": []}),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_bad_value_is_refused_naming_its_setting(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}"):
        PollerOptions(**{name: value})
    with pytest.raises(ConfigError, match=rf"^{name}"):
        Poller("rt_test_key", transport=MemoryTransport(), **{name: value})


@pytest.mark.parametrize("value", [True, 0, 2.0])
def test_max_connections_is_checked_alike_by_the_engine_and_the_transport(value: Any) -> None:
    """One check: a bool is no count of connections, wherever it is given."""
    with pytest.raises(ConfigError, match=r"^max_connections: must be an integer >= 1$"):
        PollerOptions(max_connections=value)
    with pytest.raises(ConfigError, match=r"^max_connections: must be an integer >= 1$"):
        AiohttpTransport.check_settings("http://127.0.0.1:1", value, 10.0)


def test_good_values_are_kept() -> None:
    options = PollerOptions(
        first_poll_rate_per_s=None,
        terminal_retention_s=math.inf,
        org_rate_limits={"org_a": RateLimit(5)},
        backoff=None,  # type: ignore[arg-type]  # as a keyword argument: the default
        seed=3,
    )
    assert options.first_poll_rate_per_s is None and options.backoff == Backoff()
    assert options.org_rate_limits == {"org_a": RateLimit(5)}


def test_keywords_take_the_place_of_the_options_fields() -> None:
    base = PollerOptions(max_connections=3, subscriber_buffer=5)
    poller = Poller("rt_test_key", options=base, transport=MemoryTransport(), subscriber_buffer=7)
    assert poller.options == msgspec.structs.replace(base, subscriber_buffer=7)
    assert Poller("rt_test_key", transport=MemoryTransport()).options == PollerOptions()
    with pytest.raises(TypeError):
        Poller("rt_test_key", max_conections=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"^options:"):
        Poller("rt_test_key", options={"max_connections": 3})  # type: ignore[arg-type]
