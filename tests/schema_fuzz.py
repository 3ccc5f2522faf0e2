"""Schemathesis against a live service's own OpenAPI schema, with every check (no 5xx, statuses,
content types, headers and bodies as documented, invalid data rejected, valid data accepted, Allow
on 405, auth honoured), for one credential. Deterministic (Hypothesis derandomized) and bounded
(examples per operation, a timeout per request and for the run). Settings: tests/schemathesis.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")


def run_schemathesis(url: str, token: str | None, *, max_examples: int, timeout: float = 600, request_timeout: float = 60) -> dict:
    """Run `st run` on url/openapi.json; the figures of its summary, and its output."""
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
               "--checks", "all", "--max-examples", str(max_examples), "--generation-deterministic", "--workers", "1",
               "--request-timeout", str(request_timeout), "--no-color",
               # max_response_time (in --checks all) would fail a completion slower than 10 s: on two CPU
               # cores shared with other work a real one can be. The bound is against hangs, not the model's speed.
               "--max-response-time", str(request_timeout)]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:  # schemathesis keeps a cache in its working directory
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=scratch)
    output = result.stdout + result.stderr
    figures = {"rc": result.returncode, "seconds": round(time.monotonic() - started, 1), "output": output}
    if match := re.search(r"Tested: (\d+)", output):
        figures["operations"] = int(match.group(1))
    if match := re.search(r"(\d+) generated", output):
        figures["generated"] = int(match.group(1))
    return figures


def assert_clean(figures: dict, what: str) -> None:
    print(f"schemathesis {what}: {figures.get('operations')} operations, {figures.get('generated')} test cases, "
          f"exit {figures['rc']}, {figures['seconds']} s")
    assert figures["rc"] == 0, f"schemathesis found failures on {what}:\n{figures['output'][-20000:]}"
    assert figures.get("operations"), figures["output"][-4000:]


NON_STANDARD = frozenset({"ge", "gt", "le", "lt", "allow_inf_nan", "strict"})


def non_standard_keywords(node: object, path: str = "") -> list[str]:
    """Where an OpenAPI schema carries pydantic's bound names instead of JSON Schema's (a bound a
    client's validator cannot see): paths, empty when there are none. Property names are skipped."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in NON_STANDARD and not path.endswith("/properties"):
                found.append(f"{path}/{key}")
            found += non_standard_keywords(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += non_standard_keywords(value, f"{path}/{index}")
    return found
