"""Credentials and the base URL: how requests authenticate, and that secrets never leak."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.auth import DEFAULT_BASE_URL, AuthScheme, Credential, resolve_base_url
from poller.errors import ConfigError

KEY = "rt_live_9fK2mQx7LpZ4vN8sR1tY"
OTHER_KEY = "rt_test_3hJ6wE0aB5cD7gF9iK2l"
TOKEN = "tok_Q8zX4cV6bN2mA1sD3fG5hJ7k"
NO_ENV: dict[str, str] = {}


# -- headers and params ---------------------------------------------------------------


def test_api_key_scheme_is_the_default_and_sends_an_api_key_header() -> None:
    credential = Credential(KEY, environ=NO_ENV)

    assert credential.scheme is AuthScheme.API_KEY
    assert dict(credential.headers) == {"Api-Key": KEY}
    assert dict(credential.params) == {}


@pytest.mark.parametrize("scheme", [AuthScheme.BEARER, "bearer"])
def test_bearer_scheme_sends_an_authorization_header(scheme: AuthScheme | str) -> None:
    credential = Credential(KEY, scheme=scheme, environ=NO_ENV)

    assert credential.scheme is AuthScheme.BEARER
    assert dict(credential.headers) == {"Authorization": f"Bearer {KEY}"}
    assert dict(credential.params) == {}


@pytest.mark.parametrize("scheme", [AuthScheme.API_KEY, "api-key"])
def test_api_key_scheme_by_value(scheme: AuthScheme | str) -> None:
    assert dict(Credential(KEY, scheme=scheme, environ=NO_ENV).headers) == {"Api-Key": KEY}


def test_access_token_is_a_query_parameter_alongside_the_key() -> None:
    credential = Credential(KEY, access_token=TOKEN, environ=NO_ENV)

    assert dict(credential.headers) == {"Api-Key": KEY}
    assert dict(credential.params) == {"access_token": TOKEN}


@pytest.mark.parametrize(
    ("kwargs", "headers", "query"),
    [
        ({}, {"Api-Key": KEY}, ""),
        ({"scheme": "bearer"}, {"Authorization": f"Bearer {KEY}"}, ""),
        ({"access_token": "t/ok+n"}, {"Api-Key": KEY}, "access_token=t%2Fok%2Bn"),
    ],
)
def test_the_parts_a_transport_sends(
    kwargs: dict[str, str], headers: dict[str, str], query: str
) -> None:
    """What a transport reads on every request: the same as the read-only views, ready
    to send (the query part encoded)."""
    credential = Credential(KEY, environ=NO_ENV, **kwargs)  # type: ignore[arg-type]

    assert credential.auth_headers == headers == dict(credential.headers)
    assert credential.auth_query == query
    assert credential.auth_headers is credential.auth_headers  # one dict, made once


def test_access_token_alone_is_enough() -> None:
    credential = Credential(access_token=TOKEN, environ=NO_ENV)

    assert dict(credential.headers) == {}
    assert dict(credential.params) == {"access_token": TOKEN}
    assert credential.secrets() == (TOKEN,)


def test_secrets_lists_key_and_token() -> None:
    assert Credential(KEY, access_token=TOKEN, environ=NO_ENV).secrets() == (KEY, TOKEN)
    assert Credential(KEY, environ=NO_ENV).secrets() == (KEY,)


# -- environment ----------------------------------------------------------------------


def test_key_falls_back_to_the_environment() -> None:
    credential = Credential(environ={"RETAB_API_KEY": OTHER_KEY})
    assert dict(credential.headers) == {"Api-Key": OTHER_KEY}


def test_an_explicit_key_beats_the_environment() -> None:
    credential = Credential(KEY, environ={"RETAB_API_KEY": OTHER_KEY})
    assert dict(credential.headers) == {"Api-Key": KEY}


def test_environment_key_with_bearer_and_token() -> None:
    credential = Credential(
        scheme="bearer", access_token=TOKEN, environ={"RETAB_API_KEY": OTHER_KEY}
    )
    assert dict(credential.headers) == {"Authorization": f"Bearer {OTHER_KEY}"}
    assert dict(credential.params) == {"access_token": TOKEN}


@pytest.mark.parametrize("environ", [{}, {"RETAB_API_KEY": ""}, {"OTHER": KEY}])
def test_nothing_given_is_a_config_error(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        Credential(environ=environ)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("api_key")
    assert "RETAB_API_KEY" in str(info.value)


@pytest.mark.parametrize("value", ["rt live", "rt_live_\tx"])
def test_environment_key_is_validated_like_an_argument(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^api_key"):
        Credential(environ={"RETAB_API_KEY": value})


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["basic", "API-KEY", "Bearer ", "", "apikey"])
def test_unknown_scheme_is_a_config_error_naming_the_setting(scheme: str) -> None:
    with pytest.raises(ConfigError) as info:
        Credential(KEY, scheme=scheme, environ=NO_ENV)
    assert str(info.value).startswith("auth_scheme")
    assert "api-key" in str(info.value)
    assert "bearer" in str(info.value)


BAD_SECRETS = {
    "empty": "",
    "inner space": "rt_live_ab cd",
    "leading space": " rt_live_abcd",
    "trailing space": "rt_live_abcd ",
    "tab": "rt_live_ab\tcd",
    "newline": "rt_live_abcd\n",
    "CRLF": "rt_live_ab\r\nX-Evil: 1",
    "NUL": "rt_live_\x00abcd",
    "escape": "rt_live_\x1b[2J",
    "DEL": "rt_live_abcd\x7f",
    "no-break space": "rt_live_ab\u00a0cd",
    "zero-width space": "rt_live_ab\u200bcd",
    "line separator": "rt_live_ab\u2028cd",
}


@pytest.mark.parametrize("key", BAD_SECRETS.values(), ids=list(BAD_SECRETS))
def test_bad_key_is_a_config_error_that_does_not_echo_it(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Credential(key, environ=NO_ENV)
    assert str(info.value).startswith("api_key")
    if key.strip():
        assert key.strip() not in str(info.value)


@pytest.mark.parametrize("token", BAD_SECRETS.values(), ids=list(BAD_SECRETS))
def test_bad_access_token_is_a_config_error(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        Credential(KEY, access_token=token, environ=NO_ENV)
    assert str(info.value).startswith("access_token")


# -- never leaks ----------------------------------------------------------------------


def test_repr_and_str_show_only_the_scheme_and_a_fingerprint() -> None:
    credential = Credential(KEY, access_token=TOKEN, environ=NO_ENV)

    for text in (repr(credential), str(credential), f"{credential}", repr([credential])):
        assert KEY not in text
        assert TOKEN not in text
        assert "rt_live" not in text
        assert credential.fingerprint in text
    assert (
        repr(credential) == f"Credential(scheme='api-key', fingerprint='{credential.fingerprint}')"
    )


def test_fingerprint_is_short_stable_and_distinguishes_credentials() -> None:
    one = Credential(KEY, environ=NO_ENV)
    fingerprint = one.fingerprint

    assert len(fingerprint) == 10
    assert all(c in "0123456789abcdef" for c in fingerprint)
    assert Credential(KEY, environ=NO_ENV).fingerprint == fingerprint
    assert Credential(OTHER_KEY, environ=NO_ENV).fingerprint != fingerprint
    assert Credential(KEY, access_token=TOKEN, environ=NO_ENV).fingerprint != fingerprint


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(
    key=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=60),
    token=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12),
    scheme=st.sampled_from(list(AuthScheme)),
)
def test_no_key_or_token_in_any_repr(key: str, token: str | None, scheme: AuthScheme) -> None:
    credential = Credential(key, scheme=scheme, access_token=token, environ=NO_ENV)
    for text in (repr(credential), str(credential), repr({credential: 1})):
        assert key not in text
        assert token is None or token not in text


def test_the_key_is_not_an_attribute_in_plain_sight() -> None:
    credential = Credential(KEY, environ=NO_ENV)
    assert not hasattr(credential, "__dict__")
    public = {name: getattr(credential, name) for name in dir(credential) if name[0] != "_"}
    assert KEY not in {v for v in public.values() if isinstance(v, str)}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    credential = Credential(KEY, access_token=TOKEN, environ=NO_ENV)
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(credential, protocol=protocol)


def test_copying_is_refused_too() -> None:
    # A consequence of refusing pickling (copy uses the same protocol); pinned so a change
    # is deliberate.
    credential = Credential(KEY, environ=NO_ENV)
    with pytest.raises(TypeError):
        copy.copy(credential)
    with pytest.raises(TypeError):
        copy.deepcopy(credential)


def test_headers_cannot_be_changed_through_the_property() -> None:
    credential = Credential(KEY, environ=NO_ENV)
    with pytest.raises(TypeError):
        credential.headers["Api-Key"] = "rt_live_someone_else"  # type: ignore[index]
    assert dict(credential.headers) == {"Api-Key": KEY}


# -- equality -------------------------------------------------------------------------


def test_equal_credentials_compare_and_hash_equal() -> None:
    one = Credential(KEY, access_token=TOKEN, environ=NO_ENV)
    two = Credential(KEY, access_token=TOKEN, environ={"RETAB_API_KEY": OTHER_KEY})

    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1
    assert {one: "a"}[two] == "a"


def test_a_key_from_the_environment_equals_the_same_key_given() -> None:
    assert Credential(environ={"RETAB_API_KEY": KEY}) == Credential(KEY, environ=NO_ENV)


@pytest.mark.parametrize(
    "other",
    [
        Credential(OTHER_KEY, environ=NO_ENV),
        Credential(KEY, scheme="bearer", environ=NO_ENV),
        Credential(KEY, access_token=TOKEN, environ=NO_ENV),
        Credential(access_token=KEY, environ=NO_ENV),
    ],
    ids=["other key", "other scheme", "extra token", "key as token"],
)
def test_different_credentials_are_unequal(other: Credential) -> None:
    one = Credential(KEY, environ=NO_ENV)
    assert one != other
    assert len({one, other}) == 2


def test_a_credential_never_equals_its_key() -> None:
    credential = Credential(KEY, environ=NO_ENV)
    assert credential != KEY
    assert KEY != credential  # noqa: SIM300 - the reflected comparison
    assert credential != None  # noqa: E711


# -- base URL -------------------------------------------------------------------------


def test_default_base_url() -> None:
    assert resolve_base_url(None, environ=NO_ENV) == DEFAULT_BASE_URL == "https://api.retab.com"


def test_base_url_from_the_environment() -> None:
    environ = {"RETAB_API_BASE_URL": "https://eu.retab.example"}
    assert resolve_base_url(None, environ=environ) == "https://eu.retab.example"


def test_empty_environment_value_means_the_default() -> None:
    assert resolve_base_url(None, environ={"RETAB_API_BASE_URL": ""}) == DEFAULT_BASE_URL


def test_an_argument_beats_the_environment() -> None:
    environ = {"RETAB_API_BASE_URL": "https://eu.retab.example"}
    assert resolve_base_url("http://127.0.0.1:8080", environ=environ) == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.retab.com/", "https://api.retab.com"),
        ("https://api.retab.com//", "https://api.retab.com"),
        ("https://proxy.example/retab/", "https://proxy.example/retab"),
        ("https://proxy.example/retab", "https://proxy.example/retab"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("HTTPS://API.RETAB.COM/", "https://api.retab.com"),
    ],
)
def test_base_url_is_normalised_without_a_trailing_slash(given: str, expected: str) -> None:
    assert resolve_base_url(given, environ=NO_ENV) == expected
    assert resolve_base_url(None, environ={"RETAB_API_BASE_URL": given}) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.retab.com",
        "file:///etc/passwd",
        "ws://api.retab.com",
        "javascript:alert(1)",
        "api.retab.com",
        "/v1/jobs",
        "//api.retab.com",
        "https://",
        "https:api.retab.com",
        "",
        "https://api.retab.com:99999",
    ],
)
def test_non_http_or_relative_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^base_url"):
        resolve_base_url(url, environ=NO_ENV)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.retab.com/?x=1",
        "https://api.retab.com?access_token=abc",
        "https://api.retab.com/#frag",
        "https://user:s3cr3t-pw@api.retab.com",
        "https://user@api.retab.com",
        "https://:s3cr3t-pw@api.retab.com",
    ],
)
def test_query_fragment_or_credentials_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^base_url") as info:
        resolve_base_url(url, environ=NO_ENV)
    assert "s3cr3t-pw" not in str(info.value)


def test_an_invalid_environment_url_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^base_url"):
        resolve_base_url(None, environ={"RETAB_API_BASE_URL": "ftp://x.example"})
