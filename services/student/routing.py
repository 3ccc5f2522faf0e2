"""The routing table: which served model answers to which model name.

The base model is served under its own name (e.g. `smollm2-135m-instruct`, alias `base`). Every
active student (one per task) is served as `<name>-v<version>`, with its task name and its
student id as aliases; `student` and `default` name the most recently promoted one (the base
model while none is promoted). Students that share the base model are LoRA adapters over the one
loaded base, so several are served at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.student.protocol import ModelCard
from services.student.runtimes.base import Runtime
from shared.errors import NotFound


class ModelNotFound(NotFound):
    code = "model_not_found"


@dataclass(eq=False)
class ServedModel:
    id: str
    kind: str  # "base" | "student"
    runtime: Runtime
    adapter: str | None = None  # the engine's adapter name (unique per load); None: the runtime's own weights
    owns_runtime: bool = False  # a merged student has a runtime of its own, closed when it retires
    task: str | None = None
    student_id: str | None = None
    version: int | None = None
    promoted_at: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))
    inflight: int = 0
    retired: bool = False


def routing_table(base: ServedModel, students: dict[str, ServedModel]) -> dict[str, ServedModel]:
    """Every name served → its model; the most recently promoted student is also `student` / `default`."""
    table: dict[str, ServedModel] = {base.id: base, "base": base}
    newest = max(students.values(), key=lambda m: m.promoted_at, default=None)
    for model in sorted(students.values(), key=lambda m: m.promoted_at):
        for name in (model.task, model.student_id):
            if name and name not in table:
                table[name] = model
        table[model.id] = model
    table["student"] = table["default"] = newest or base
    return table


def lookup(table: dict[str, ServedModel], name: str) -> ServedModel:
    model = table.get(name)
    if model is None:
        raise ModelNotFound(f"The model '{name}' does not exist or is not served here; GET /v1/models lists the served models", param="model")
    return model


def model_cards(table: dict[str, ServedModel], *, standalone: bool) -> list[ModelCard]:
    """One card per served model, with its aliases. `standalone`: served with --model, no registry."""
    aliases: dict[int, list[str]] = {}
    for name, model in table.items():
        if name != model.id:
            aliases.setdefault(id(model), []).append(name)
    cards = []
    for model in {id(m): m for m in table.values()}.values():
        note = None
        if model.kind == "base" and table["student"] is model and not standalone:
            note = "no student promoted yet: serving the base student model"
        cards.append(ModelCard(
            id=model.id, created=model.created, dsc_kind=model.kind, task=model.task, student_id=model.student_id,
            version=model.version, aliases=sorted(aliases.get(id(model), [])), note=note,
            served_as="base" if model.kind == "base" else "adapter" if model.adapter else "merged",
        ))
    return cards
