"""Options a config passes to a function as keywords, checked against that function's own signature.

The signature is the one spec of its options: the parameter names are the allowed keys, and each
annotation says what a value may be: bool, int, float (an int is a float), str, ``Literal[...]`` (the
allowed values), ``X | None``, ``Sequence[int]``, and ``Annotated[X, Range(...)]`` for a numeric range.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric parameter, declared in its annotation: ``Annotated[float, Range(ge=0)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violation(self, value: float) -> str | None:
        """Why ``value`` lies outside the range ("must be >= 0"), or None if it lies inside."""
        for bound, op, ok in (
            (self.ge, ">=", lambda b: value >= b),
            (self.gt, ">", lambda b: value > b),
            (self.le, "<=", lambda b: value <= b),
            (self.lt, "<", lambda b: value < b),
        ):
            if bound is not None and not ok(bound):
                return f"must be {op} {bound:g}"
        return None


NonNegative = Annotated[float, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]


class OptionError(ValueError):
    """An option a function does not take, or a value its annotation refuses; ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def option_parameters(fn: Callable, *, exclude: Iterable[str] = (), keyword_only: bool = False) -> dict[str, Any]:
    """Name -> annotation of every parameter of ``fn`` a config may set (``exclude``: those the caller passes).

    ``keyword_only`` keeps only the parameters after ``*``. A function with ``*args`` or ``**kwargs``
    has no finite set of options, so it is refused.
    """
    params = inspect.signature(fn).parameters.values()
    loose = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if loose:
        raise TypeError(f"{fn.__qualname__} takes *{loose[0]}: its options cannot be derived from its signature")
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn, include_extras=True)
    kinds = (inspect.Parameter.KEYWORD_ONLY,) if keyword_only else (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
    )
    skip = set(exclude)
    return {p.name: hints.get(p.name, Any) for p in params if p.kind in kinds and p.name not in skip}


def required_options(fn: Callable, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that ``fn`` has no default for."""
    params = inspect.signature(fn).parameters
    return [n for n in names if params[n].default is inspect.Parameter.empty]


def check_options(
    fn: Callable,
    options: Mapping[str, Any],
    *,
    owner: str,
    exclude: Iterable[str] = (),
    keyword_only: bool = False,
) -> None:
    """Refuse an option ``fn`` does not take, or a value its annotation does not allow.

    ``owner`` names ``fn`` in the message ("sampler function 'ddim'"); ``exclude`` and ``keyword_only``
    as in option_parameters.
    """
    check_values(options, option_parameters(fn, exclude=exclude, keyword_only=keyword_only), owner=owner)


def check_values(options: Mapping[str, Any], allowed: Mapping[str, Any], *, owner: str) -> None:
    """Refuse a name not in ``allowed`` (name -> annotation, as from option_parameters) or a value it does not fit."""
    for name, value in options.items():
        if name not in allowed:
            raise OptionError(name, f"unknown option {name!r} of {owner}; allowed: {sorted(allowed)}")
        why = value_error(value, allowed[name])
        if why:
            raise OptionError(name, f"value {value!r} {why}")


def value_error(value: Any, annotation: Any) -> str | None:
    """Why a YAML ``value`` does not fit ``annotation`` ("is not of type float"), or None if it fits."""
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        why = value_error(value, base)
        if why:
            return why
        return next((v for r in meta if isinstance(r, Range) and (v := r.violation(value))), None)
    if origin is Literal:
        allowed = list(typing.get_args(annotation))
        listed = any(value == a and type(value) is type(a) for a in allowed)
        return None if listed else f"is not allowed; allowed: {allowed}"
    if origin in (Union, types.UnionType):
        arms = typing.get_args(annotation)
        whys = [value_error(value, arm) for arm in arms]
        if any(w is None for w in whys):
            return None
        # A value of the right type but out of range or off the list: say why, not "is not of type".
        specific = [w for w, arm in zip(whys, arms, strict=True) if not w.startswith("is not of type")]
        return specific[0] if specific else f"is not of type {' or '.join(type_name(a) for a in arms)}"
    if origin in (Sequence, list, tuple):
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            return f"is not of type {type_name(annotation)}"
        item = args[0] if args else Any
        bad = next((v for v in value if value_error(v, item)), None)
        return None if bad is None else f"is not of type {type_name(annotation)} (item {bad!r})"
    if annotation is type(None):
        return None if value is None else "is not of type None"
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        # Tensors, callables, ...: nothing a YAML value can be.
        ok = False
    return None if ok else f"is not of type {type_name(annotation)}"


def type_name(annotation: Any) -> str:
    """A short name of an annotation for messages: float, int or None, Sequence[int]."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin in (Sequence, list, tuple):
        args = typing.get_args(annotation)
        return f"Sequence[{type_name(args[0])}]" if args else "Sequence"
    if origin is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))
