"""A pydantic wire model's msgspec twin: the same fields, derived from the model, decoded about 5x faster.

The pydantic models stay the single definition of the contract. `twin(Model)` reads a model's
fields (names, wire aliases, types, defaults, `ge`/`le`/`gt`/`lt` bounds) and builds a frozen
`msgspec.Struct` with exactly those; nested models become their own twins. What msgspec would
check differently is refused when the twin is built (`TypeError` at import), never guessed:
validators, serializers, computed fields, other field constraints (lengths, patterns, strict,
discriminators), alias choices, `extra="allow"`, strict models, and types outside the plain JSON
ones (int, float, str, bool, None, Literal, enums, list, dict, `X | None`, wire models).

The twin is stricter than pydantic's lax mode in one direction only: it takes JSON as it is
(a number for a number), where pydantic also coerces (`"80"` or `80.0` for an int, `true` for
an int). So a twin is used with its model behind it (`trainguard.api.sample.read_sample`): a line
the twin refuses is judged by pydantic, which either accepts it (then its model is converted to the
twin) or raises the error naming the field. A line the twin accepts, pydantic accepts with the
same values (tests/unit/api/test_wire.py proves it on the traces and on generated lines, valid and
broken). Both read the wire names only (pydantic with `by_name=False`): a snake_case key is an
unknown field to both.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import msgspec
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

_BOUNDS = {annotated_types.Ge: "ge", annotated_types.Le: "le", annotated_types.Gt: "gt", annotated_types.Lt: "lt"}
_PLAIN = (int, float, str, bool, type(None))
#: Model settings that change nothing about which JSON is accepted or the values it gives (aliases are read
#: from the fields; `populate_by_name` matters to Python construction only: lines are read by wire names).
_NEUTRAL_CONFIG = frozenset(
    {"alias_generator", "populate_by_name", "extra", "frozen", "use_attribute_docstrings", "title", "defer_build"}
)
_twins: dict[type[BaseModel], type[msgspec.Struct]] = {}


def twin(model: type[BaseModel], *, required: Collection[str] = ()) -> type[msgspec.Struct]:
    """The frozen msgspec Struct with the model's fields (see the module). `required` names fields that
    the twin requires even though the model has a default for them (the fast path then declines lines
    without them, which go to pydantic)."""
    key = model
    if not required and key in _twins:
        return _twins[key]
    if not model.__pydantic_complete__:
        # A field naming a type defined after the model (a forward reference) is resolved now.
        model.model_rebuild(raise_errors=True)
    _refuse_behaviour(model)
    config = model.model_config
    changes = sorted(set(config) - _NEUTRAL_CONFIG)
    if changes:
        # str_strip_whitespace, strict, use_enum_values, coerce_numbers_to_str...: they change what is accepted.
        raise TypeError(f"{model.__name__}: model_config {', '.join(changes)} has no msgspec twin")
    extra = config.get("extra") or "ignore"
    if extra == "allow":
        raise TypeError(f"{model.__name__}: extra='allow' has no msgspec twin")
    fields: list[tuple[str, Any, Any]] = []
    for name, info in model.model_fields.items():
        where = f"{model.__name__}.{name}"
        if info.validation_alias is not None and info.validation_alias != info.alias:
            raise TypeError(f"{where}: a validation alias other than the alias has no msgspec twin")
        tp = _bounded(_convert(info.annotation, where), info.metadata, where)
        wire_name = info.alias or name
        if name in required:
            spec = msgspec.field(name=wire_name)
        elif info.default_factory is not None:
            spec = msgspec.field(name=wire_name, default_factory=_factory(info.default_factory))
        elif info.default is PydanticUndefined:
            spec = msgspec.field(name=wire_name)
        else:
            spec = msgspec.field(name=wire_name, default=info.default)
        fields.append((name, tp, spec))
    struct = msgspec.defstruct(
        f"{model.__name__}Struct",
        fields,
        frozen=bool(config.get("frozen")),
        kw_only=True,
        forbid_unknown_fields=extra == "forbid",
        module=model.__module__,
    )
    if not required:
        _twins[key] = struct
    return struct


def from_model(value: BaseModel, struct: type[msgspec.Struct]) -> Any:
    """A validated model instance as its twin (field by field, nested models too)."""
    return msgspec.convert(value, struct, from_attributes=True)


def _refuse_behaviour(model: type[BaseModel]) -> None:
    decorators = model.__pydantic_decorators__
    for kind in (
        "validators",
        "field_validators",
        "root_validators",
        "model_validators",
        "field_serializers",
        "model_serializers",
        "computed_fields",
    ):
        if getattr(decorators, kind):
            raise TypeError(f"{model.__name__}: {kind} have no msgspec twin")


def _factory(factory: Callable[..., Any]) -> Callable[[], Any]:
    def make() -> Any:
        value = factory()
        if isinstance(value, BaseModel):
            return from_model(value, twin(type(value)))
        return value

    return make


def _bounded(tp: Any, metadata: list[Any], where: str) -> Any:
    bounds: dict[str, Any] = {}
    for m in metadata:
        kind = _BOUNDS.get(type(m))
        if kind is None:
            raise TypeError(f"{where}: the constraint {m!r} has no msgspec twin")
        bounds[kind] = getattr(m, kind)
    if not bounds:
        return tp
    meta = msgspec.Meta(**bounds)
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"{where}: bounds on a union other than `X | None` have no msgspec twin")
        # A bound constrains the value, not its absence (as pydantic applies it to `X | None`).
        return Annotated[inner[0], meta] | None
    return Annotated[tp, meta]


def _convert(tp: Any, where: str) -> Any:
    if isinstance(tp, type):
        if issubclass(tp, BaseModel):
            return twin(tp)
        if issubclass(tp, enum.Enum) or tp in _PLAIN:
            return tp
    if tp is None:
        return type(None)
    origin = get_origin(tp)
    if origin is Literal and all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in get_args(tp)):
        return tp
    if origin is list:
        (item,) = get_args(tp)
        return list[_convert(item, where)]  # type: ignore[misc]
    if origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise TypeError(f"{where}: only string keys have a msgspec twin")
        return dict[str, _convert(value, where)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        converted = tuple(_convert(a, where) for a in get_args(tp))
        return typing.Union[converted]  # noqa: UP007 (a runtime union of computed types)
    raise TypeError(f"{where}: the type {tp!r} has no msgspec twin")
