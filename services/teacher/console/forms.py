"""HTML forms built from the API's own request models (SampleRequest, DistillationConfig), so a
form shows each field's default and description and is validated exactly as the JSON body is."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from shared.errors import InvalidRequest, validation_summary


@dataclass(frozen=True)
class FormField:
    name: str
    kind: str  # int | float | bool | choice | text | lines (one value per line) | words (comma-separated)
    default: Any
    help: str
    options: tuple[str, ...] = ()
    optional: bool = False

    def checked(self, values: Mapping[str, str]) -> bool:
        """A checkbox: as posted (a posted form carries `_form`; an unticked box sends nothing), else the default."""
        return self.name in values if "_form" in values else bool(self.default)

    def shown(self, values: Mapping[str, str]) -> Any:
        """What the input holds: the value posted (a form re-shown with its error), else the default."""
        if self.name in values:
            return values[self.name]
        if self.default is None:
            return ""
        if self.kind in ("lines", "words"):
            return ("\n" if self.kind == "lines" else ", ").join(self.default)
        return self.default


def _kind(annotation: Any) -> tuple[str, tuple[str, ...], bool]:
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) < len(typing.get_args(annotation))
    if optional and len(args) == 1:
        annotation = args[0]
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        return "choice", tuple(str(option) for option in typing.get_args(annotation)), optional
    if typing.get_origin(annotation) is list:
        return "lines", (), optional
    if annotation is bool:
        return "bool", (), optional
    if annotation is int:
        return "int", (), optional
    if annotation is float:
        return "float", (), optional
    return "text", (), optional


def describe(model: type[BaseModel], names: list[str], *, words: tuple[str, ...] = ()) -> list[FormField]:
    """The form of `names` of `model`; list fields named in `words` take comma-separated values."""
    fields = []
    for name in names:
        info = model.model_fields[name]
        kind, options, optional = _kind(info.annotation)
        if name in words:
            kind = "words"
        default = info.get_default(call_default_factory=True)
        fields.append(FormField(name, kind, None if default is PydanticUndefined else default, info.description or "", options, optional))
    return fields


def parse(model: type[BaseModel], fields: list[FormField], form: Mapping[str, str]) -> BaseModel:
    """The model from posted form values: a blank field keeps the model's default; a checkbox is
    false when absent. InvalidRequest (400) names every field that does not validate."""
    values: dict[str, Any] = {}
    for field in fields:
        raw = form.get(field.name)
        if field.kind == "bool":
            values[field.name] = raw is not None
            continue
        if raw is None or not raw.strip():
            continue
        raw = raw.strip()
        try:
            if field.kind == "int":
                values[field.name] = int(raw)
            elif field.kind == "float":
                values[field.name] = float(raw)
            elif field.kind == "lines":
                values[field.name] = [line.strip() for line in raw.splitlines() if line.strip()]
            elif field.kind == "words":
                values[field.name] = [word for word in raw.replace(",", " ").split() if word]
            else:
                values[field.name] = raw
        except ValueError:
            raise InvalidRequest(f"{field.name}: {raw!r} is not {'a whole number' if field.kind == 'int' else 'a number'}",
                                 param=field.name) from None
    try:
        return model.model_validate(values)
    except ValidationError as error:
        message = validation_summary(error, whole="form")
        first = error.errors()[0]["loc"]
        raise InvalidRequest(message, param=str(first[0]) if first else None) from None
