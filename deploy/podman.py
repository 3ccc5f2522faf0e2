"""Build and run the compose stack with podman, where there is no Docker engine and no image registry.

    python3 deploy/podman.py up      # `make compose-up`: images, then the CPU stack, then wait until ready
    python3 deploy/podman.py down    # stop it (the volumes stay); --volumes removes them too
    python3 deploy/podman.py tools   # install podman, podman-compose, debootstrap, runc (apt-get)
    python3 deploy/podman.py images  # build the images only

What it does, step by step (`tests/deploy/test_stack.py` drives the same functions):
1. a Debian base image from debootstrap (Docker Hub cannot be reached), and on it stand-ins for the
   two public images the stack starts from: Debian's Python for python:3.11-slim-bookworm and
   Debian's PostgreSQL for postgres:16 (deploy/images/);
2. the dSC images from Dockerfile.teacher and Dockerfile.student on that base, pip reaching PyPI
   through the host's CA bundle and taking the CPU torch from the local wheel directory when the
   host has one;
3. the containers from docker-compose.yml with podman-compose, then starts them in the order the
   file's `depends_on` conditions ask for (podman-compose 1.0.3 creates them but ignores the
   conditions): postgres healthy, then `prepare` to completion, then the services.

podman-compose echoes each podman command with its `-e` values; this script masks the env file's
secrets in everything it prints. Only the standard library and PyYAML are needed.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
DEBIAN_IMAGE = "localhost/debian-min:bookworm"
PYTHON_IMAGE = "localhost/dsc-python:3.11-bookworm"
POSTGRES_IMAGE = "localhost/dsc-postgres:15"
COMPOSE_FILE = "docker-compose.yml"
SECRET_KEYS = ("DSC_API_KEYS", "DSC_ADMIN_TOKEN", "POSTGRES_PASSWORD")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
LOCAL_WHEELS = Path("/opt/wheels")  # where this project's CI machines keep the CPU torch wheel
TOOLS = {"podman": "podman", "podman-compose": "podman-compose", "debootstrap": "debootstrap", "runc": "runc"}


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    """One compose project: its name, its env file (interpolation and every service's env_file)."""

    project: str
    env_file: Path
    variant: str = "cpu"
    log: list[str] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose's naming

    def url(self, service: str) -> str:
        port_key, default = {"teacher": ("TEACHER_PORT", "8000"), "student": ("STUDENT_PORT", "8001")}[service]
        return f"http://127.0.0.1:{self.settings.get(port_key, default)}"


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def write_env_file(path: Path) -> None:
    """.env.example with a fresh random value for each secret (never printed)."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={secrets.token_urlsafe(24)}" if key in SECRET_KEYS else line)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def podman_env() -> dict[str, str]:
    # HEALTHCHECK is a Docker-format field: OCI images would drop it.
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), "BUILDAH_FORMAT": "docker"}


def masked(text: str, hidden: list[str]) -> str:
    for value in hidden:
        if value:
            text = text.replace(value, "***")
    return text


def run(command: list[str], *, hidden: list[str] = (), check: bool = True, quiet: bool = False, timeout: float | None = None,
        cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command with podman's settings; print its output (secrets masked) unless quiet."""
    result = subprocess.run(command, cwd=cwd, env={**podman_env(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout)
    output = masked(result.stdout, list(hidden))
    if not quiet and output.strip():
        print(output, end="" if output.endswith("\n") else "\n", flush=True)
    if check and result.returncode != 0:
        raise StackError(f"`{' '.join(command[:4])} …` exited {result.returncode}:\n{output[-4000:]}")
    return result


def ensure_tools() -> None:
    """Debian's podman, podman-compose, debootstrap and runc; installed with apt-get where missing (as root)."""
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(f"missing {', '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    print(f"installing {' '.join(missing)} …", flush=True)
    run(["apt-get", "update", "-qq"], quiet=True)
    run(["apt-get", "install", "-y", "-qq", *missing], quiet=True)


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False, quiet=True).returncode == 0


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def debian_base() -> None:
    """localhost/debian-min:bookworm from a debootstrap root (kept once built)."""
    if image_exists(DEBIAN_IMAGE):
        return
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()], quiet=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", DEBIAN_IMAGE], stdin=tar.stdout, env=podman_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise StackError(f"podman import failed: {imported.stderr[-2000:]}")


def build(tag: str, containerfile: str, *, context: str = ".", args: dict[str, str] | None = None,
          volumes: list[str] = ()) -> float:
    """podman build on the host's network; the seconds it took."""
    started = time.monotonic()
    command = ["podman", "build", "--network=host", "-t", tag, "-f", containerfile]
    for key, value in (args or {}).items():
        command += ["--build-arg", f"{key}={value}"]
    for volume in volumes:
        command += ["-v", volume]
    run([*command, context], quiet=True, timeout=3600)
    return time.monotonic() - started


def build_images(variant: str = "cpu") -> dict[str, float]:
    """Every image the stack needs here; seconds per image (a cached layer costs nothing)."""
    if variant != "cpu":
        raise StackError("this host has no GPU: only the cpu variant is built here")
    debian_base()
    seconds = {
        PYTHON_IMAGE: build(PYTHON_IMAGE, "deploy/images/python.Containerfile", context="deploy/images",
                            args={"DEBIAN_IMAGE": DEBIAN_IMAGE}),
        POSTGRES_IMAGE: build(POSTGRES_IMAGE, "deploy/images/postgres.Containerfile", context="deploy/images",
                              args={"DEBIAN_IMAGE": DEBIAN_IMAGE}),
    }
    args, volumes = {"BASE_IMAGE": PYTHON_IMAGE, "VARIANT": variant}, []
    if HOST_CA.exists():
        args["PIP_CERT"] = "/etc/ssl/certs/host-ca.crt"
        volumes.append(f"{HOST_CA}:/etc/ssl/certs/host-ca.crt:ro")
    if list(LOCAL_WHEELS.glob("torch-2.13.0+cpu-*.whl")):
        args["TORCH_PIP_ARGS"] = "--find-links /wheels"
        volumes.append(f"{LOCAL_WHEELS}:/wheels:ro")
    image = f"localhost/dsc:{variant}"
    seconds[image] = build(image, "Dockerfile.teacher", args=args, volumes=volumes)
    student = f"localhost/dsc-student:{variant}"
    seconds[student] = build(student, "Dockerfile.student", args={"DSC_IMAGE": image})
    return seconds


def image_sizes() -> dict[str, int]:
    """Bytes of each image of the stack (podman's figure: every layer, shared ones included)."""
    sizes = {}
    for image in (DEBIAN_IMAGE, PYTHON_IMAGE, POSTGRES_IMAGE, "localhost/dsc:cpu", "localhost/dsc-student:cpu"):
        result = run(["podman", "image", "inspect", "--format", "{{.Size}}", image], check=False, quiet=True)
        if result.returncode == 0:
            sizes[image] = int(result.stdout.strip())
    return sizes


def compose_file() -> dict:
    import yaml  # podman-compose brings it (python3-yaml); ensure_tools installs that first

    return yaml.safe_load((ROOT / COMPOSE_FILE).read_text())


def compose_services() -> dict:
    return compose_file()["services"]


def start_order(services: dict) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for dependency in services[name].get("depends_on", {}):
                visit(dependency)
            order.append(name)

    for name in services:
        visit(name)
    return order


def wait_for(stack: Stack, service: str, condition: str, timeout: float = 900) -> None:
    """Block until `service` meets a compose depends_on condition."""
    name, deadline = stack.container(service), time.monotonic() + timeout
    if condition == "service_completed_successfully":
        code = run(["podman", "wait", name], quiet=True, timeout=timeout).stdout.strip()
        if code != "0":
            logs = run(["podman", "logs", "--tail", "40", name], check=False, quiet=True).stdout
            raise StackError(f"{service} exited {code}:\n{masked(logs, stack_secrets(stack))}")
    elif condition == "service_healthy":
        while run(["podman", "healthcheck", "run", name], check=False, quiet=True).returncode != 0:
            if time.monotonic() > deadline:
                raise StackError(f"{service} not healthy after {timeout:.0f} s")
            time.sleep(1)


def stack_secrets(stack: Stack) -> list[str]:
    settings = stack.settings
    return [settings[key] for key in SECRET_KEYS if settings.get(key)]


def compose(stack: Stack, *args: str, env: dict[str, str] | None = None) -> None:
    """podman-compose on a copy of the compose file beside the env file as `.env`: what docker
    compose's --env-file does (podman-compose 1.0.3 reads only the project directory's .env, and
    lets it override the environment)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / COMPOSE_FILE, tmp)
        shutil.copy(stack.env_file, Path(tmp) / ".env")
        run(["podman-compose", "-p", stack.project, "-f", str(Path(tmp) / COMPOSE_FILE), *args],
            hidden=stack_secrets(stack), quiet=True, cwd=Path(tmp), env=env)


def up(stack: Stack, *, postgres_image: str = POSTGRES_IMAGE) -> dict[str, float]:
    """Create the containers and start them in depends_on order; seconds from start to each
    condition met (postgres healthy, prepare done)."""
    remove_containers(stack)
    compose(stack, "up", "--no-build", "--no-start", env={"POSTGRES_IMAGE": postgres_image})
    services, started, seconds = compose_services(), time.monotonic(), {}
    for service in start_order(services):
        for dependency, rule in services[service].get("depends_on", {}).items():
            if f"{dependency}:{rule['condition']}" not in seconds:
                wait_for(stack, dependency, rule["condition"])
                seconds[f"{dependency}:{rule['condition']}"] = time.monotonic() - started
        run(["podman", "start", stack.container(service)], quiet=True)
    return seconds


def wait_ready(url: str, timeout: float = 900, *, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if not alive():
            raise StackError(f"{url}: the container stopped before it was ready")
        time.sleep(2)
    raise StackError(f"{url} not ready after {timeout:.0f} s")


def running(stack: Stack, service: str) -> bool:
    state = run(["podman", "inspect", "--format", "{{.State.Status}}", stack.container(service)], check=False, quiet=True)
    return state.stdout.strip() == "running"


def stop(stack: Stack, timeout: int = 60) -> dict[str, int]:
    """SIGTERM every container, dependants first; each one's exit status."""
    codes = {}
    for service in reversed(start_order(compose_services())):
        name = stack.container(service)
        if run(["podman", "container", "exists", name], check=False, quiet=True).returncode != 0:
            continue
        run(["podman", "stop", "-t", str(timeout), name], check=False, quiet=True, timeout=timeout + 30)
        codes[service] = int(run(["podman", "inspect", "--format", "{{.State.ExitCode}}", name], quiet=True).stdout.strip())
    return codes


def remove_containers(stack: Stack) -> None:
    """Stop and remove the project's containers and its network (podman-compose makes it again)."""
    stop(stack)
    names = run(["podman", "ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={stack.project}"], quiet=True).stdout.split()
    if names:
        run(["podman", "rm", "-f", *names], quiet=True)
    run(["podman", "network", "rm", "-f", f"{stack.project}_default"], check=False, quiet=True)


def remove_volumes(stack: Stack) -> None:
    for volume in compose_file()["volumes"]:
        run(["podman", "volume", "rm", "-f", f"{stack.project}_{volume}"], check=False, quiet=True)


def logs(stack: Stack, service: str, tail: int = 60) -> str:
    return masked(run(["podman", "logs", "--tail", str(tail), stack.container(service)], check=False, quiet=True).stdout,
                  stack_secrets(stack))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The compose stack on podman (CPU).")
    parser.add_argument("command", choices=["tools", "images", "up", "down"])
    parser.add_argument("--project", default="dsc", help="compose project name (containers and volumes are prefixed with it)")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env", help="written from .env.example with random secrets when missing")
    parser.add_argument("--volumes", action="store_true", help="down: remove the volumes too (the database, models and students)")
    options = parser.parse_args(argv)
    stack = Stack(project=options.project, env_file=options.env_file.resolve())
    try:
        if options.command == "down":
            remove_containers(stack)
            if options.volumes:
                remove_volumes(stack)
            return 0
        ensure_tools()
        if options.command == "tools":
            return 0
        if not stack.env_file.exists():
            write_env_file(stack.env_file)
            print(f"wrote {stack.env_file} with random secrets (read them there)")
        started = time.monotonic()
        for image, seconds in build_images().items():
            print(f"image {image}: {seconds:.0f} s")
        print(f"images ready in {time.monotonic() - started:.0f} s")
        if options.command == "images":
            return 0
        started = time.monotonic()
        up(stack)
        for service in ("teacher", "student"):
            wait_ready(stack.url(service), alive=lambda: running(stack, service))
            print(f"{service}: {stack.url(service)} ready after {time.monotonic() - started:.0f} s")
        print(f"stop it with: python3 deploy/podman.py down --project {stack.project}")
        return 0
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
