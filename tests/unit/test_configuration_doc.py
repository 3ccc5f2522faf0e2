"""docs/configuration.md is generated from shared/settings.py: it lists every variable, and it is
what the generator writes today (regenerate with `make docs` after changing a setting)."""

from __future__ import annotations

from pathlib import Path

from shared.settings import environment_names
from shared.settings_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_doc_is_generated_from_the_settings():
    text = DOC.read_text()
    assert text == render(), "docs/configuration.md differs from shared/settings.py: run `make docs`"
    for variable in environment_names():  # every variable that sets a field, with its row
        assert f"`{variable}`" in text or f"`{variable} / " in text or f" / {variable}`" in text, variable
