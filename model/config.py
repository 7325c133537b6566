"""Typed, frozen, validated configs: one place for each field's type, default and bounds.

Every ``*Config`` of the model is a frozen dataclass whose fields pydantic validates (``validated``):
the same checks run when Python builds one and when a sweep spec names one, so a bad value fails
before any work starts. Python gets a ``ConfigError`` of one line naming the key; the sweeper
renders a spec file's errors with the same ``describe``.

Numbers are typed with this module's ``Int``, ``PositiveInt``, ``NonNegativeInt``, ``Float``,
``PositiveFloat`` and ``NonNegativeFloat`` rather than pydantic's own: in its lax mode ``true`` is the
integer 1 and the string "2" a number, and neither is what a spec that says so means. So a boolean or a
string is never a number here, an integer is one that fits in 64 bits (what torch, SQLite and MLflow
store), and every float of every config is finite (``allow_inf_nan=False``): ``.inf``, ``.nan`` and
``1e400`` are refused with the key named.
"""

from __future__ import annotations

import difflib
import functools
import math
import unicodedata
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from .errors import ConfigError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1



def _int64(value: int) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"expected a 64-bit integer (from {INT64_MIN} to {INT64_MAX}), got {kind_of(value)}")
    return value


# Numbers as a spec means them (see the module's docstring): strict (no booleans, no strings), 64-bit integers.
# The 64-bit range is a validator, not Field(ge=, le=): pydantic keeps one bound of each kind, the type's, so a
# field's own `Field(0, ge=0)` on an Int would be dropped silently.
Int = Annotated[int, Strict(), AfterValidator(_int64)]
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
Float = Annotated[float, Strict()]  # an integer is a number too; finite where the config says allow_inf_nan=False
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]

# The config every model config and every section of a sweep spec validates with: no key it does not know,
# no float that is not finite.
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def _one_line(text: str) -> str:
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(f"control character U+{ord(bad):04X} in {short_repr(text)}; expected printable text")
    return text


# A name or a path: one line of printable text (a NUL byte would end it at the operating system's door).
Text = Annotated[str, AfterValidator(_one_line)]


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
        cls = dataclass(frozen=True, config=CONFIG)(cls)
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
    key = bool(loc) and loc[-1] == "[key]"  # a mapping's key is wrong: pydantic's loc is (..., key, '[key]')
    if key:
        del loc[-2:]
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
        bound = next(iter(ctx.values()))
        bound = bound if isinstance(bound, int) else f"{bound:g}"
        text = f"expected a number {_BOUNDS[kind]} {bound}, got {kind_of(e['input'])}"
    elif kind in ("model_type", "dict_type", "dataclass_type"):
        text = f"expected a mapping, got {kind_of(e['input'])}"
    elif kind == "too_short":
        n = ctx["min_length"]
        text = f"expected at least {n} item{'s' if n != 1 else ''}, got {kind_of(e['input'])}"
    else:  # pydantic's 'Input should be ...' without its parse detail
        text = f"expected {msg.split(', unable to')[0]}, got {kind_of(e['input'])}"
    text = f"a key: {text}" if key else text
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{'.'.join(loc)}: {text}" if loc else text) + more  # a check across sections names its keys


def kind_of(value) -> str:
    """What a value is, for 'expected X, got <kind>' (short, whatever the value)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int) and abs(value) >= 10**40:  # the repr of a 5000-digit int raises, and says little
        return f"a number of {math.floor(math.log10(abs(value))) + 1} digits"
    for types, word in ((str, "a string"), ((int, float), "a number"), ((list, tuple), "a list"), (dict, "a mapping")):
        if isinstance(value, types):
            text = _repr_within(value, 40)
            if text is not None:
                return f"{word} {text}"
            return f"{word} of {len(value)} items" if isinstance(value, (list, tuple, dict)) else word
    return type(value).__name__


def _repr_within(value, limit: int) -> str | None:
    """repr(value) if it has at most ``limit`` characters, else None (and never a repr of a long string
    or a large container: a string of a megabyte, a list of 20,000 items, a 5000-digit int)."""
    if isinstance(value, (str, list, tuple, dict)) and len(value) > limit:
        return None
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return None
    return text if len(text) <= limit else None


def short_repr(value, limit: int = 60) -> str:
    """repr(value), cut to about ``limit`` characters with '...' in the middle (for a value echoed in a message)."""
    if isinstance(value, str) and len(value) > 4 * limit:
        value = value[:limit] + value[-limit:]
    try:
        r = repr(value)
    except (ValueError, RecursionError):  # an int of more than 4300 digits, a list that holds itself
        r = f"<a {type(value).__name__}>"
    return r if len(r) <= limit else f"{r[:limit // 2]}...{r[-(limit // 2):]}"


def exception_line(exc: BaseException, limit: int = 160) -> str:
    """'Type: message' of ``exc`` on one line, without the C++ trace torch appends, cut to ``limit`` characters."""
    text = " ".join(str(exc).split("Exception raised from")[0].split())
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
