"""`dsc student serve`: the command exists and refuses an open non-loopback bind."""

from __future__ import annotations

from typer.testing import CliRunner

from services.cli import app


def test_student_serve_refuses_public_bind_without_keys(monkeypatch, tmp_path):
    for name in ("DSC_API_KEYS", "DSC_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DSC_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["student", "serve", "--host", "0.0.0.0", "--port", "18001"])
    assert result.exit_code == 2
    assert "--insecure" in result.output


def test_student_serve_help_lists_its_options():
    result = CliRunner().invoke(app, ["student", "serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--insecure"):
        assert option in result.output
