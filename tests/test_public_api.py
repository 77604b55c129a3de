"""The public API: ``poller.__all__`` is complete and correct; every public name is documented."""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from typing import Any

import pytest

import poller
import poller.errors
import poller.models

# Modules whose whole __all__ is for users: everything they list must be importable from
# `poller` directly.
FULLY_PUBLIC_MODULES = (
    "poller.errors",
    "poller.models",
    "poller.events",
    "poller.sched.backoff",
    "poller.engine",
    "poller.subscription",
    "poller.transport",
    "poller.blocking",
)
# Names from modules that also hold internals (budgets, URL helpers), which users need:
# the types of Poller's settings and of a custom transport's arguments.
ALSO_REQUIRED = ("AuthScheme", "Credential", "PollerOptions", "PollerSettings", "RateLimit")


def _required_names() -> list[str]:
    names: set[str] = set(ALSO_REQUIRED)
    for module_name in FULLY_PUBLIC_MODULES:
        names.update(importlib.import_module(module_name).__all__)
    return sorted(names)


def _own_doc(obj: Any) -> str | None:
    """The docstring an object defines itself (classes inherit theirs via ``__doc__``)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return doc if isinstance(doc, str) else None


def _exported_objects() -> list[tuple[str, Any]]:
    return [(name, getattr(poller, name)) for name in poller.__all__ if name != "__version__"]


@pytest.mark.parametrize("name", poller.errors.__all__)
def test_every_error_is_exported(name: str) -> None:
    assert name in poller.__all__
    assert getattr(poller, name) is getattr(poller.errors, name)


@pytest.mark.parametrize("name", poller.models.__all__)
def test_every_model_is_exported(name: str) -> None:
    assert name in poller.__all__
    assert getattr(poller, name) is getattr(poller.models, name)


@pytest.mark.parametrize("name", _required_names())
def test_every_name_users_need_is_exported(name: str) -> None:
    assert name in poller.__all__


def test_every_name_in_all_exists_once() -> None:
    assert len(poller.__all__) == len(set(poller.__all__))
    missing = [name for name in poller.__all__ if not hasattr(poller, name)]
    assert missing == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from poller import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(poller.__all__)


def test_exported_classes_and_functions_are_pollers_own() -> None:
    # Every class or function exported comes from a poller module, never a dependency.
    for name, obj in _exported_objects():
        module = getattr(obj, "__module__", None)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert module is not None
            assert module.split(".")[0] == "poller", name


def test_version_is_a_version_string() -> None:
    from poller._version import __version__

    assert poller.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", poller.__version__)


@pytest.mark.parametrize(("name", "obj"), _exported_objects(), ids=lambda v: str(v)[:40])
def test_every_exported_name_has_a_docstring(name: str, obj: Any) -> None:
    if isinstance(obj, types.UnionType):
        # A type alias (``Event``, ``TransitionCallback``) cannot carry a docstring; check
        # its members instead.
        for member in obj.__args__:
            if getattr(member, "__module__", "").startswith("poller"):
                assert (_own_doc(member) or "").strip(), f"{name}: {member!r}"
        return
    if isinstance(obj, typing.NewType):  # JobId: a documented str
        assert (obj.__doc__ or "").strip(), name
        return
    assert inspect.isclass(obj) or inspect.isfunction(obj), name
    doc = _own_doc(obj)
    assert doc is not None
    assert doc.strip(), name


def _public_members() -> list[tuple[str, Any]]:
    members = []
    for name, obj in _exported_objects():
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, property):
                members.append((f"{name}.{attr}", value.fget))
            elif isinstance(value, staticmethod | classmethod):
                members.append((f"{name}.{attr}", value.__func__))
            elif inspect.isfunction(value):
                members.append((f"{name}.{attr}", value))
    return members


@pytest.mark.parametrize(("name", "func"), _public_members(), ids=lambda v: str(v)[:60])
def test_every_public_method_and_property_has_a_docstring(name: str, func: Any) -> None:
    assert (func.__doc__ or "").strip(), name


def test_the_error_tree_in_the_docstring_matches_the_classes() -> None:
    """The tree drawn in ``poller.errors``' docstring is the real hierarchy, and complete."""
    doc = poller.errors.__doc__
    assert doc is not None
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        # "    PollerError", "    ├── ConfigError   ...", "    │   ├── ConnectError   ..."
        match = re.match(r"^([\s│├└─]*)([A-Z]\w*Error)\b", line)
        if not match:
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            drawn[name] = stack[-1][1]
        stack.append((depth, name))

    public = set(poller.errors.__all__)
    assert set(drawn) | {"PollerError"} == public
    for name, parent in drawn.items():
        cls = getattr(poller.errors, name)
        # The nearest public ancestor (private helpers like _RetryAfterError are skipped).
        nearest = next(base.__name__ for base in cls.__mro__[1:] if base.__name__ in public)
        assert nearest == parent, name
