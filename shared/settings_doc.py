"""docs/configuration.md, generated from the fields of shared/settings.py and their descriptions, so
the two cannot drift: `python -m shared.settings_doc > docs/configuration.md` (`make docs`);
tests/unit/test_configuration_doc.py fails when the file and the settings differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from shared.settings import Settings, SettingsGroup, environment_names, setting_groups

HEADER = """\
# Configuration

<!-- Generated from shared/settings.py by `python -m shared.settings_doc` (make docs); do not edit by hand. -->

Every setting is an environment variable with the `DSC_` prefix (or a line of a `.env` file in the
working directory); CLI flags override them. In code the settings are one object (`Settings`,
`shared/settings.py`): what every service reads at the top (`settings.engine`), the rest grouped by
the service or engine it configures (`settings.student.max_pending`). The variables keep their
flat names: `DSC_STUDENT_MAX_PENDING` sets `settings.student.max_pending`; the nested form
`DSC_<GROUP>__<FIELD>` (`DSC_STUDENT__MAX_PENDING`) works too and wins over the flat name. A
misspelt group variable fails at start instead of being ignored.
"""


FOOTER = """
## Read from the environment, but not settings

- `DSC_REWARD_SECRET_<NAME>`: a secret an `http` reward's `headers_from_env` may name; read on
  every batch, never stored ([security.md](security.md)).
- On SQLite, `?timeout=<s>` on `DSC_DATABASE_URL` sets how long a writer waits for the lock (30 s)
  before a request answers 503 and the workers wait.
- `dsc demo` reads `DSC_DEMO_CLIENT_KEY` / `DSC_DEMO_ADMIN_TOKEN` for `--client-key` / `--admin-token`.
"""


def shown_default(field: FieldInfo) -> str:
    """The default as a reader would write it: unset, a number, a comma list, a path under ~."""
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None or value == [] or value == "":
        return "unset"
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, Path):
        home = str(Path.home())
        value = "~" + str(value)[len(home):] if str(value).startswith(home) else str(value)
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if isinstance(value, SettingsGroup):
        return "—"
    return f"`{value}`"


def _row(variable: str, field: FieldInfo) -> str:
    meaning = " ".join((field.description or "").split()).replace("|", "\\|")
    return f"| `{variable}` | {shown_default(field)} | {meaning} |"


def render() -> str:
    """The whole of docs/configuration.md."""
    groups = setting_groups()
    variables: dict[str, list[str]] = {}
    for variable, path in environment_names().items():
        variables.setdefault(path, []).append(variable)
    lines = [HEADER, "## Every service (`settings.<field>`)", "", "| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name not in groups:
            lines.append(_row(" / ".join(variables[name]), field))
    for name, group in groups.items():
        title = " ".join((group.__doc__ or name).split())
        lines += ["", f"## `settings.{name}`: {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [_row(group.variable(member), field) for member, field in group.model_fields.items()]
    return "\n".join(lines) + "\n" + FOOTER


if __name__ == "__main__":
    print(render(), end="")
