"""The images' pinned dependency sets (requirements/*.lock.txt) against pyproject.toml's ranges.

    python3 deploy/locks.py gpu     # re-resolve requirements/gpu.lock.txt with pip's resolver (PyPI)

`cpu.lock.txt` is frozen from a venv that passed `make test` (requirements/README.md);
`gpu.lock.txt` cannot be installed without a GPU host, so it is what pip's resolver picks for
`dsc[gpu]` from PyPI (PyPI's Linux torch is the CUDA build). tests/deploy/test_pins.py checks both
against pyproject.toml and re-resolves the GPU set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"cpu": ROOT / "requirements" / "cpu.lock.txt", "gpu": ROOT / "requirements" / "gpu.lock.txt"}
PYPI = "https://pypi.org/simple"
GPU_HEADER = """\
# The GPU image's dependency set (Dockerfile.teacher, VARIANT=gpu): what pip's resolver picks from
# PyPI for dsc[gpu] on Linux x86_64, Python 3.11. Regenerate: python3 deploy/locks.py gpu
# (tests/deploy/test_pins.py checks it against pyproject.toml and that it still resolves).
"""


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def supported(extra: str) -> list[Requirement]:
    """pyproject.toml's ranges for one variant: the dependencies plus the variant's extra."""
    spec = project()
    return [Requirement(line) for line in [*spec["dependencies"], *spec["optional-dependencies"][extra]]]


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def disagreements(pins: dict[str, str], requirements: list[Requirement], *, not_pinned: set[str] = frozenset()) -> list[str]:
    """Each requirement the pins miss or pin outside its range."""
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in not_pinned:
            continue
        if name not in pins:
            problems.append(f"{requirement}: not pinned")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement}: pinned {pins[name]}")
        for extra in requirement.extras:  # psycopg[binary] needs psycopg-binary pinned too
            if extra == "binary" and canonicalize_name(f"{name}-binary") not in pins:
                problems.append(f"{requirement}: {name}-binary not pinned")
    return problems


def resolve(requirements: list[str]) -> dict[str, str]:
    """What pip's resolver installs for `requirements` from PyPI into an empty environment
    (nothing is downloaded but metadata; nothing is installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        # --isolated: this machine's pip configuration (local wheel directories, constraints) stays out.
        command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--report", str(report), "--index-url", PYPI]
        if os.environ.get("PIP_CERT"):
            command += ["--cert", os.environ["PIP_CERT"]]
        result = subprocess.run([*command, *requirements], capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"pip could not resolve {' '.join(requirements)}:\n{result.stderr[-4000:]}")
        installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def write_gpu_lock() -> None:
    pins = resolve([f"{ROOT}[gpu]"])
    pins.pop("dsc")
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    LOCKS["gpu"].write_text(GPU_HEADER + "\n".join(lines) + "\n")
    print(f"{LOCKS['gpu'].relative_to(ROOT)}: {len(lines)} packages")


if __name__ == "__main__":
    if sys.argv[1:] != ["gpu"]:
        sys.exit(__doc__)
    write_gpu_lock()
