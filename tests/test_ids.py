"""Job ID validation: nothing that passes can address another resource."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller._ids import MAX_JOB_ID_LENGTH, validate_job_id
from poller.errors import InvalidJobIdError, PollerError

VALID = [
    "job_V1StGXR8_Z5jdHi6B-myT",
    "a",
    "0",
    "job-123",
    "job.v2",
    "a..b",
    "...",  # not a dot segment: an ordinary name
    "ns:job:42",
    "~job~",
    "A" * MAX_JOB_ID_LENGTH,
]

HOSTILE = {
    "empty": "",
    "dot-dot": "..",
    "dot": ".",
    "parent traversal": "../x",
    "traversal deeper": "job/../../v1/admin",
    "slash": "a/b",
    "leading slash": "/a",
    "backslash": "a\\b",
    "query": "a?b=c",
    "fragment": "a#b",
    "encoded dot-dot": "%2e%2e",
    "encoded slash": "a%2Fb",
    "percent": "100%",
    "space": "a b",
    "leading space": " job",
    "trailing space": "job ",
    "tab": "a\tb",
    "newline": "a\nb",
    "trailing newline": "job_1\n",
    "carriage return": "a\rb",
    "CRLF injection": "job\r\nX-Evil: 1",
    "NUL": "a\x00b",
    "bell": "a\x07",
    "escape": "\x1b[31mjob",
    "DEL": "job\x7f",
    "C1 control": "job\x85",
    "cyrillic a": "j\u043eb_1",
    "fullwidth slash": "a\uff0fb",
    "fullwidth dot-dot": "\uff0e\uff0e",
    "one dot leader": "\u2024\u2024",
    "fraction slash": "a\u2044b",
    "zero-width space": "job\u200b",
    "no-break space": "job\u00a0",
    "bidi override": "job\u202e",
    "arabic-indic digits": "\u0661\u0662",
    "e acute": "caf\u00e9",
    "emoji": "job\U0001f600",
    "semicolon": "a;b",
    "at": "a@b",
    "ampersand": "a&b",
    "plus": "a+b",
    "quote": 'a"b',
    "angle brackets": "<job>",
    "too long": "A" * (MAX_JOB_ID_LENGTH + 1),
    "far too long": "A" * 100_000,
}


@pytest.mark.parametrize("job_id", VALID)
def test_valid_ids_pass_unchanged(job_id: str) -> None:
    assert validate_job_id(job_id) is job_id


@pytest.mark.parametrize("job_id", VALID)
def test_valid_ids_need_no_percent_encoding(job_id: str) -> None:
    # What passes is made of RFC 3986 path characters (unreserved, and ":"), so quoting
    # leaves it alone and it can never split into, or climb out of, a path segment.
    assert quote(job_id, safe=":") == job_id
    assert job_id not in (".", "..")


@pytest.mark.parametrize("job_id", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_ids_are_refused(job_id: str) -> None:
    with pytest.raises(InvalidJobIdError) as info:
        validate_job_id(job_id)
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, PollerError)
    # The message is safe to log: one printable line, never the ID raw.
    message = str(error)
    assert message.isprintable()
    assert len(message) < 300


@pytest.mark.parametrize(
    "job_id",
    [None, 123, 1.5, b"job_1", bytearray(b"job_1"), ["job_1"], ("job_1",), object()],
    ids=["None", "int", "float", "bytes", "bytearray", "list", "tuple", "object"],
)
def test_non_str_ids_are_refused(job_id: object) -> None:
    with pytest.raises(InvalidJobIdError) as info:
        validate_job_id(job_id)
    assert "str" in str(info.value)
    assert type(job_id).__name__ in str(info.value)


def test_the_length_limit_is_inclusive() -> None:
    assert validate_job_id("j" * MAX_JOB_ID_LENGTH) == "j" * MAX_JOB_ID_LENGTH
    with pytest.raises(InvalidJobIdError, match=str(MAX_JOB_ID_LENGTH)):
        validate_job_id("j" * (MAX_JOB_ID_LENGTH + 1))


def test_message_does_not_echo_a_huge_id() -> None:
    huge = "A" * 1_000_000
    with pytest.raises(InvalidJobIdError) as info:
        validate_job_id(huge)
    message = str(info.value)
    assert len(message) < 200
    assert "A" * 50 not in message
    assert "1000000" in message  # it says how long it was


def test_message_shortens_a_long_id_with_a_bad_character() -> None:
    job_id = "B" * (MAX_JOB_ID_LENGTH - 1) + "/"
    with pytest.raises(InvalidJobIdError) as info:
        validate_job_id(job_id)
    message = str(info.value)
    assert "B" * 41 not in message
    assert "B" * 40 + "..." in message


def test_message_escapes_control_characters() -> None:
    with pytest.raises(InvalidJobIdError) as info:
        validate_job_id("job\r\nX-Evil: 1")
    message = str(info.value)
    assert "\r" not in message
    assert "\n" not in message
    assert "\\r\\n" in message


_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~:-"


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(job_id=st.text(st.sampled_from(_SAFE + "/?#%\\ \t\n\x00.") | st.characters(), max_size=40))
def test_any_text_is_either_refused_or_path_safe(job_id: str) -> None:
    try:
        result = validate_job_id(job_id)
    except InvalidJobIdError:
        expected_valid = (
            bool(job_id) and all(c in _SAFE for c in job_id) and job_id not in (".", "..")
        )
        assert not expected_valid
        return
    assert result == job_id
    assert set(job_id) <= set(_SAFE)
    assert job_id not in (".", "..")
    assert quote(job_id, safe=":") == job_id


class _Disguised(str):
    """A str subclass that checks as one ID and formats as another path."""

    def __format__(self, spec: str) -> str:
        return "../../admin?x="

    def __str__(self) -> str:
        return "../../admin?x="


def test_a_str_subclass_is_checked_and_returned_as_the_plain_string() -> None:
    checked = validate_job_id(_Disguised("job_1"))
    assert type(checked) is str and checked == "job_1"
    assert f"/v1/jobs/{checked}/status" == "/v1/jobs/job_1/status"


def test_only_validate_job_id_makes_a_job_id() -> None:
    """Every transport trusts a JobId: nothing in the package but validate_job_id may
    make one out of a str (a cast would do it too: there is none either)."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "poller"
    makers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                first = node.args[0] if node.args else None
                is_cast = name == "cast" and isinstance(first, ast.Name) and first.id == "JobId"
                if name == "JobId" or is_cast:
                    makers.append(f"{path.relative_to(package)}:{node.lineno}")
    assert [m.split(":")[0] for m in makers] == ["_ids.py"], makers
