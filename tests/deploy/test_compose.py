"""The compose file against the code: every command exists, ports and settings line up.

There is no Docker engine on these machines; `docker-compose config` (Debian's docker-compose)
validates the file where it is installed, and these checks tie it to the CLI and the settings.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DSC_SERVICES = [name for name in SERVICES if name != "postgres"]
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and not line.startswith("#")
)


def _dsc_commands(service: dict) -> list[list[str]]:
    command = service["command"]
    if command[:2] == ["sh", "-c"]:
        return [part.strip().split()[0:3] for part in command[2].split("&&")]
    return [command]


@pytest.mark.parametrize("name", DSC_SERVICES)
def test_every_command_is_a_real_cli_command(name):
    for command in _dsc_commands(SERVICES[name]):
        assert command[0] == "dsc"
        words = [word for word in command[1:] if not word.startswith(("-", '"'))][:2]
        result = CliRunner().invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"{name}: `dsc {' '.join(words)}` is not a command: {result.output}"
        for flag in [word for word in command if word.startswith("--")]:
            assert flag in result.output, f"{name}: `dsc {' '.join(words)}` has no option {flag}"


def test_ports_match_the_services_defaults():
    settings = Settings()
    assert SERVICES["teacher"]["ports"] == ["${TEACHER_PORT:-8000}:" + str(settings.teacher_port)]
    assert SERVICES["student"]["ports"] == ["${STUDENT_PORT:-8001}:" + str(settings.student_port)]
    assert str(settings.teacher_port) in SERVICES["teacher"]["command"]
    assert str(settings.student_port) in SERVICES["student"]["command"]
    for name in ("teacher", "student"):
        port = SERVICES[name]["command"][-1]
        assert f"127.0.0.1:{port}/readyz" in " ".join(SERVICES[name]["healthcheck"]["test"])


@pytest.mark.parametrize("name", DSC_SERVICES)
def test_environment_names_real_settings_and_volumes_back_the_paths(name):
    service = SERVICES[name]
    fields = set(Settings.model_fields)
    for key in service["environment"]:
        if key.startswith("DSC_"):
            assert key[4:].lower() in fields, f"{name}: {key} is not a setting"
    mounts = {volume.split(":")[1] for volume in service["volumes"]}
    assert {service["environment"]["DSC_DATA_DIR"], service["environment"]["DSC_MODEL_STORE"]} <= mounts
    assert service["environment"]["DSC_DATABASE_URL"].startswith("postgresql://dsc:")
    assert "@postgres:5432/dsc" in service["environment"]["DSC_DATABASE_URL"]
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_gpu_services_reserve_a_gpu_and_start_after_prepare():
    for name in ("teacher", "trainer", "student"):
        devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert SERVICES[name]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert SERVICES["trainer"]["image"] == SERVICES["teacher"]["image"]  # the trainer runs from the teacher image


def test_env_example_sets_every_required_variable():
    text = (ROOT / "docker-compose.yml").read_text()
    required = {part.split(":?")[0] for part in text.split("${")[1:] if ":?" in part.split("}")[0]}
    assert required <= set(ENV_EXAMPLE), f"missing in .env.example: {required - set(ENV_EXAMPLE)}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_docker_compose_validates_the_file():
    result = subprocess.run(["docker-compose", "--env-file", ".env.example", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
