"""Typed, frozen, validated configs: one place for each field's type, default and bounds.

Every ``*Config`` of the model is a frozen dataclass whose fields pydantic validates (``validated``):
the same checks run when Python builds one and when a sweep spec names one, so a bad value fails
before any work starts. Python gets a ``ConfigError`` of one line naming the key; the sweeper
renders a spec file's errors with the same ``describe``.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable

from pydantic import ConfigDict, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from .errors import ConfigError


class BadValue(ValueError):
    """A value a check across fields rejects; ``key`` names the field to blame (relative to the config)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def did_you_mean(value, known: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest of ``known`` to ``value``, or ''."""
    close = difflib.get_close_matches(str(value), list(known), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(given: Iterable, known: Iterable[str]) -> None:
    """BadValue for the first key of ``given`` that is not ``known``, with a did-you-mean hint."""
    known = list(known)
    for key in given:
        if key not in known:
            hint = did_you_mean(key, known, cutoff=0.75)  # a typo, not a guess
            raise BadValue(str(key), "unknown key" + (hint or f"; expected one of {', '.join(known)}"))


def validated(section: str | None):
    """Class decorator: a frozen dataclass validated by pydantic, unknown keys rejected with a hint.

    Building one with a bad value (directly, or by ``dataclasses.replace``) raises ``ConfigError``
    naming ``section.key``; validated as part of a larger pydantic model (a sweep spec), it raises
    pydantic's errors, located there.
    """

    def make(cls):
        def known_keys(c, raw):  # raw: a mapping, or pydantic's ArgsKwargs of a call
            check_keys(raw if isinstance(raw, dict) else getattr(raw, "kwargs", None) or {}, c.__pydantic_fields__)
            return raw

        cls._known_keys = model_validator(mode="before")(classmethod(known_keys))
        cls = dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            try:
                init(self, *args, **kwargs)
            except ValidationError as err:
                raise ConfigError(describe(err, section)) from None

        cls.__init__ = __init__
        return cls

    return make


# --- one line per validation error ------------------------------------------------------------

_BOUNDS = {"greater_than": "greater than", "greater_than_equal": "greater than or equal to",
           "less_than": "less than", "less_than_equal": "less than or equal to"}


def describe(err: ValidationError, section: str | None = None) -> str:
    """The first problem as 'dotted.key: what is wrong; what was expected, got <value>' (keys under ``section``)."""
    errors = err.errors()
    e, cause = errors[0], (errors[0].get("ctx") or {}).get("error")
    loc = [*([section] if section else []), *map(str, e["loc"]), *([cause.key] if isinstance(cause, BadValue) else [])]
    kind, ctx, msg = e["type"], e.get("ctx") or {}, e["msg"].removeprefix("Input should be ")
    if kind == "value_error":  # our own checks say what they expected and got
        text = str(cause) if cause is not None else e["msg"]
    elif kind == "missing" and isinstance(e["loc"][-1], int):  # a fixed-length list that is too short
        loc.pop()
        text = f"too few items, got {kind_of(e['input'])}"
    elif kind == "missing":
        text = "missing required key"
    elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
        text = "unknown key"
    elif kind in _BOUNDS:
        text = f"expected a number {_BOUNDS[kind]} {next(iter(ctx.values())):g}, got {kind_of(e['input'])}"
    elif kind in ("model_type", "dict_type", "dataclass_type"):
        text = f"expected a mapping, got {kind_of(e['input'])}"
    elif kind == "too_short":
        n = ctx["min_length"]
        text = f"expected at least {n} item{'s' if n != 1 else ''}, got {kind_of(e['input'])}"
    else:  # pydantic's 'Input should be ...' without its parse detail
        text = f"expected {msg.split(', unable to')[0]}, got {kind_of(e['input'])}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{'.'.join(loc)}: {text}" if loc else text) + more  # a check across sections names its keys


def kind_of(value) -> str:
    """What a value is, for 'expected X, got <kind>'."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    for types, word in ((str, "a string"), ((int, float), "a number"), ((list, tuple), "a list"), (dict, "a mapping")):
        if isinstance(value, types):
            if len(repr(value)) <= 40:
                return f"{word} {value!r}"
            return f"{word} of {len(value)} items" if isinstance(value, (list, tuple, dict)) else word
    return type(value).__name__
