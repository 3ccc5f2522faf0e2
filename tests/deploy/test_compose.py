"""The compose files and Dockerfiles against the code: every command exists, ports and settings
line up, every operator setting reaches the services.

`docker-compose config` (Debian's docker-compose) validates the files where it is installed, and
these checks tie them to the CLI and the settings; test_stack.py builds and runs the stack.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from shared.settings import Settings, environment_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
GPU = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
SERVICES = COMPOSE["services"]
DSC_SERVICES = [name for name in SERVICES if name != "postgres"]
STACK_DECIDES = {"DSC_DATABASE_URL", "DSC_DATA_DIR", "DSC_MODEL_STORE"}  # not the operator's to change
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
    assert SERVICES["teacher"]["ports"] == ["${TEACHER_PORT:-8000}:" + str(settings.teacher.port)]
    assert SERVICES["student"]["ports"] == ["${STUDENT_PORT:-8001}:" + str(settings.student.port)]
    assert str(settings.teacher.port) in SERVICES["teacher"]["command"]
    assert str(settings.student.port) in SERVICES["student"]["command"]
    for name in ("teacher", "student"):
        port = SERVICES[name]["command"][-1]
        assert f"127.0.0.1:{port}/readyz" in " ".join(SERVICES[name]["healthcheck"]["test"])


@pytest.mark.parametrize("name", DSC_SERVICES)
def test_environment_names_real_settings_and_volumes_back_the_paths(name):
    service = SERVICES[name]
    variables = environment_names()
    for key in service["environment"]:
        if key.startswith("DSC_"):
            assert key in variables, f"{name}: {key} is not a setting"
    mounts = {volume.split(":")[1] for volume in service["volumes"]}
    assert {service["environment"]["DSC_DATA_DIR"], service["environment"]["DSC_MODEL_STORE"]} <= mounts
    assert service["environment"]["DSC_DATABASE_URL"].startswith("postgresql://dsc:")
    assert "@postgres:5432/dsc" in service["environment"]["DSC_DATABASE_URL"]
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_services_start_after_prepare_from_one_image():
    for name in ("teacher", "trainer", "student"):
        assert SERVICES[name]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert {SERVICES[name]["image"] for name in DSC_SERVICES} == {"dsc:cpu"}
    assert SERVICES["teacher"]["build"]["dockerfile"] == "Dockerfile.teacher"
    assert all("deploy" not in SERVICES[name] for name in DSC_SERVICES)  # the CPU stack runs where there is no GPU


def test_gpu_override_reserves_the_gpu_with_the_cuda_image():
    services = GPU["services"]
    assert set(services) == set(DSC_SERVICES)
    assert {service["image"] for service in services.values()} == {"dsc:gpu"}
    assert {service["build"]["args"]["VARIANT"] for service in services.values()} == {"gpu"}
    for name in ("teacher", "trainer", "student"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("name", DSC_SERVICES)
def test_every_operator_setting_reaches_the_service(name):
    """The env file goes to every service as it is (so DSC_RATE_LIMIT, DSC_REWARD_SECRET_<NAME>, …
    reach them); `environment` overrides it only where the stack decides, or with a value the
    operator sets in the same file (`${DSC_X:-default}`, `${TEACHER_GPU_MEMORY_UTILIZATION:-0.45}`)."""
    for compose in (COMPOSE, GPU):
        service = compose["services"][name]
        if compose is COMPOSE:
            assert service["env_file"] == "${DSC_ENV_FILE:-.env}"
        for key, value in service.get("environment", {}).items():
            if key.startswith("DSC_") and key not in STACK_DECIDES:
                assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]*\}", str(value)), f"{name}: {key}={value} would hide the env file's value"


def test_env_example_names_real_settings():
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#? ?(DSC_[A-Z_]+)=", text, re.MULTILINE)) - {"DSC_REWARD_SECRET_SCORER"}
    assert names and names - set(environment_names()) == set()


@pytest.mark.parametrize("dockerfile", ["Dockerfile.teacher", "Dockerfile.student"])
def test_images_take_their_base_from_an_argument_and_run_as_a_user_with_a_healthcheck(dockerfile):
    lines = [line.strip() for line in (ROOT / dockerfile).read_text().splitlines()]
    stages = [line.split()[3] for line in lines if line.startswith("FROM ") and " AS " in line]
    for line in (line for line in lines if line.startswith("FROM ")):
        assert line.split()[1].startswith("${") or line.split()[1] in stages, f"{line}: a public image cannot be pulled here"
    port = next(line.split()[1] for line in lines if line.startswith("EXPOSE "))
    assert f"http://127.0.0.1:{port}/readyz" in "\n".join(lines)
    assert f'"--port", "{port}"]' in [line for line in lines if line.startswith("CMD ")][-1]
    if dockerfile == "Dockerfile.teacher":  # the student image is built on it
        final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
        assert "USER dsc" in final and any("useradd" in line for line in final)


def test_env_example_sets_every_required_variable():
    text = (ROOT / "docker-compose.yml").read_text()
    required = {part.split(":?")[0] for part in text.split("${")[1:] if ":?" in part.split("}")[0]}
    assert required <= set(ENV_EXAMPLE), f"missing in .env.example: {required - set(ENV_EXAMPLE)}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_docker_compose_validates_the_file():
    env = {**os.environ, "DSC_ENV_FILE": ".env.example"}
    for files in (["-f", "docker-compose.yml"], ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"]):
        result = subprocess.run(["docker-compose", "--env-file", ".env.example", *files, "config", "-q"], cwd=ROOT,
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
