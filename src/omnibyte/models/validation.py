"""Checks shared by every config: field ranges, errors that name the field, and the model size limit.

A config is checked before anything is built from it, the same way whether it comes from
``--set``, from a ``config.json`` or from Python (``ModelConfig(hidden_size=...)``):

  * each field's type (``BaseConfig``), finiteness for floats and the range of ``Limit``;
  * the rules between fields (``validate`` of each config);
  * the size of the model it describes (``check_model_size``): its parameter count and the
    memory building it takes are estimated from the config alone, and a model above the limit
    is refused before one byte of it is allocated. The limit is ``DEFAULT_MAX_PARAMETERS``,
    or the environment variable ``OMNIBYTE_MAX_PARAMETERS`` (0: none), or ``model_size_limit``.

This module depends on nothing else in omnibyte but its errors, so the layers, the configs and
the model files can all use it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
from typing import Iterator

from omnibyte.errors import OmnibyteError

DEFAULT_MAX_PARAMETERS = 2_000_000_000  # every shipped preset (flat 1b: ~1.0B) fits with room
MAX_PARAMETERS_ENV = "OMNIBYTE_MAX_PARAMETERS"
BYTES_PER_PARAMETER = 4  # models are built in float32
ALLOW_LARGE_HINT = f"pass --allow-large, or set {MAX_PARAMETERS_ENV}=0, if you mean it"


class ConfigError(OmnibyteError, ValueError):
    """A config value that is refused, with the path of the field it is about.

    An ``OmnibyteError`` (the CLI prints it as one line) and a ``ValueError`` (what config
    checks have always raised). ``str`` is ``"<field> <problem>"``, e.g.
    ``"stages[1].hidden_size must be an integer in [1, 65536], got -64"``."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}" if field else problem)

    def under(self, prefix: str) -> ConfigError:
        """The same error for a field nested under ``prefix`` (a sub-config's field)."""
        return ConfigError(f"{prefix}.{self.field}" if self.field else f"{prefix}:", self.problem)


@contextlib.contextmanager
def field_path(prefix: str) -> Iterator[None]:
    """Errors raised inside are about fields under ``prefix`` (e.g. ``stages[1]``)."""
    try:
        yield
    except ConfigError as error:
        raise error.under(prefix) from None


@dataclasses.dataclass(frozen=True)
class Limit:
    """The allowed range of a number: ``[low, high]``, an end left out with ``None``, an end
    excluded with ``low_open``/``high_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        """``[1, 65536]``, ``(0, 1]``, ``>= 0``, ``> 0``."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}" if self.low is not None else "any"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"{'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}")


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int) and value >= 2**20 and (value & (value - 1)) == 0:
        return f"2**{value.bit_length() - 1}"  # 2**24 reads better than 16777216
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_range(name: str, value: float, limit: Limit, kind: str = "a number") -> None:
    """Refuse ``value`` outside ``limit``: the message names the field and the range."""
    if not limit.contains(value):
        if limit.low is not None and limit.low == limit.high:
            raise ConfigError(name, f"must be {_number(limit.low)}, got {value!r}")
        raise ConfigError(name, f"must be {kind} {_range_words(limit)}, got {value!r}")


def _range_words(limit: Limit) -> str:
    described = limit.describe()
    return f"in {described}" if described[0] in "[(" else described


def check_positive_int(name: str, value: object, high: int | None = None) -> int:
    """An integer >= 1 (and <= ``high``): for arguments that are not config fields."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    check_range(name, value, Limit(1, high), "an integer")
    return value


def check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")


# ---- the size of a model, estimated from its config ---------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSize:
    """What building a model takes: its parameters, and the bytes of everything allocated at
    build time (float32 weights plus buffers such as rotary tables, at their peak)."""

    parameters: int
    build_bytes: int

    def __add__(self, other: ModelSize) -> ModelSize:
        return ModelSize(self.parameters + other.parameters, self.build_bytes + other.build_bytes)

    @classmethod
    def of_parameters(cls, parameters: int) -> ModelSize:
        return cls(parameters, BYTES_PER_PARAMETER * parameters)


_limit_override: contextvars.ContextVar[tuple[int | None] | None] = contextvars.ContextVar(
    "omnibyte_max_parameters", default=None)


@contextlib.contextmanager
def model_size_limit(max_parameters: int | None) -> Iterator[None]:
    """Models built inside may have up to ``max_parameters`` parameters (None: no limit).

    ``--allow-large`` is ``with model_size_limit(None): ...`` around a command."""
    if max_parameters is not None:
        check_positive_int("max_parameters", max_parameters)
    token = _limit_override.set((max_parameters,))
    try:
        yield
    finally:
        _limit_override.reset(token)


def max_parameters() -> int | None:
    """The limit in force: ``model_size_limit``, else ``OMNIBYTE_MAX_PARAMETERS`` (0: none),
    else ``DEFAULT_MAX_PARAMETERS``; None means no limit."""
    override = _limit_override.get()
    if override is not None:
        return override[0]
    text = os.environ.get(MAX_PARAMETERS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PARAMETERS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise OmnibyteError(f"{MAX_PARAMETERS_ENV} must be a whole number of parameters (0: no limit), "
                            f"got {text!r}")
    return value or None


def check_model_size(size: ModelSize | None, limit: int | None = None) -> None:
    """Refuse a model above the limit (``limit``, default ``max_parameters()``) before it is
    built: more parameters than the limit, or more memory to build than the limit's float32
    weights. ``size`` None (a family that gives no estimate) passes."""
    limit = max_parameters() if limit is None else limit
    if size is None or limit is None:
        return
    if size.parameters > limit:
        raise OmnibyteError(f"the model would have {size.parameters:,} parameters, above the limit of "
                            f"{limit:,}; {ALLOW_LARGE_HINT}")
    if size.build_bytes > BYTES_PER_PARAMETER * limit:
        raise OmnibyteError(
            f"building the model would take about {_gigabytes(size.build_bytes)} (weights and position "
            f"tables), above the limit of {_gigabytes(BYTES_PER_PARAMETER * limit)} "
            f"({limit:,} float32 parameters); {ALLOW_LARGE_HINT}")


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB"
