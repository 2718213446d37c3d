"""The base of every typed configuration: a pydantic model whose validation errors become one ``ConfigError`` line
naming the dotted key (``data.val_fraction must be < 0.5, got 0.7``), or the flag for a `FlagSchema`
(``--max-batch``). The sections themselves are in `pneumo.config`."""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from pneumo.errors import ConfigError

NEW_RUN = {"new_run": True}  # validation context: also check what must exist on this machine (weights, presets)
_WORDS = {"int_parsing": "an integer", "int_from_float": "an integer", "int_type": "an integer",
          "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
          "bool_parsing": "true or false", "bool_type": "true or false", "string_type": "a string",
          "list_type": "a list", "model_type": "a mapping", "model_attributes_type": "a mapping"}
_SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}  # a bound's name in pydantic's error context -> its sign


class Schema(BaseModel):
    """A config section: unknown keys are errors, infinite/NaN floats are refused, numbers may name strings
    (``name=123``); attributes stay assignable (checked again by ``validate``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False,
                              coerce_numbers_to_str=True)
    _prefix: ClassVar[str] = ""  # the section's dotted key when a section is built on its own

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(self._message(exc)) from None

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # nested sections: pydantic's own path

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        """``true``/``false`` for a number is a mistake, not 1/0 (pydantic's lax mode would take ``epochs: true`` as 1
        epoch): refused unless the field takes a bool."""
        if isinstance(value, bool) and info.field_name and not _takes_bool(cls.model_fields[info.field_name].annotation):
            number = _numbers_of(cls.model_fields[info.field_name].annotation)
            if number:
                raise ValueError(f"must be {_WORDS['int_type'] if number == {int} else _WORDS['float_type']}")
        return value

    @classmethod
    def checked(cls, values: dict[str, Any], context: dict[str, Any] | None = None) -> typing.Self:
        """``values`` validated into ``cls``; a ``ValidationError`` becomes one ConfigError line."""
        try:
            return cls.model_validate(values, context=context)
        except ValidationError as exc:
            raise ConfigError(cls._message(exc)) from None

    def validate(self) -> typing.Self:  # type: ignore[override]
        """Check the current values again (attributes may have been assigned since) and what a new run needs on this
        machine (a weights file, the ensemble's presets); returns self, one-line ConfigError otherwise."""
        type(self).checked(self.model_dump(), NEW_RUN)
        return self

    @classmethod
    def _key(cls, loc: tuple[Any, ...]) -> str:
        return cls._prefix + ".".join(str(part) for part in loc)

    @classmethod
    def _message(cls, exc: ValidationError) -> str:
        """The first problem as one line: ``<key> must be <rule>, got <value>`` or ``<key>: <pydantic's words>``."""
        errors = exc.errors()
        err, more = errors[0], f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        key, got, kind, ctx = cls._key(err["loc"]), err.get("input"), err["type"], err.get("ctx", {})
        if kind == "extra_forbidden":
            section: Any = cls
            for part in err["loc"][:-1]:
                section = section.model_fields[part].annotation
            return f"unknown config key {key}; known: {', '.join(section.model_fields)}"
        if kind == "value_error":
            text = str(ctx["error"])
            if text.startswith("must be "):  # a rule of this schema's own validators: worded as pydantic's
                return f"{key} {text}, got {got!r}{more}"
            return (text if not key or text.startswith((key, "--")) else f"{key}: {text}") + more  # names itself
        if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            rule = " ".join(f"{_SIGNS[bound]} {limit if isinstance(limit, int) else format(limit, 'g')}" for bound, limit in ctx.items())
        elif kind == "literal_error":
            rule = f"one of {ctx['expected']}"
        elif kind in _WORDS:
            rule = _WORDS[kind]
        else:
            return f"{key}: {err['msg']} (got {got!r}){more}"
        return f"{key} must be {rule}, got {got!r}{more}"



class FlagSchema(Schema):
    """A schema filled from command-line flags: its errors name the flag (``--max-batch``), not a dotted key."""

    _flags: ClassVar[frozenset[str] | None] = None  # the fields a command has a flag for (None: all)

    @classmethod
    def _key(cls, loc: tuple[Any, ...]) -> str:
        if not loc:
            return ""
        field = str(loc[0])  # a field without a flag is named as the library caller set it
        return f"--{field.replace('_', '-')}" if cls._flags is None or field in cls._flags else f"{cls.__name__}.{field}"


def _leaves(annotation: Any) -> set[Any]:
    """The plain types an annotation is built from (``int | None`` -> int, NoneType; ``Annotated[int, ...]`` -> int)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _leaves(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaves(arg) for arg in typing.get_args(annotation)))
    return {annotation}


def _takes_bool(annotation: Any) -> bool:
    leaves = _leaves(annotation)
    return bool in leaves or Any in leaves or any(typing.get_origin(leaf) is typing.Literal for leaf in leaves)


def _numbers_of(annotation: Any) -> set[type]:
    return _leaves(annotation) & {int, float}
