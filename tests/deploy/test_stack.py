"""The compose stack for real: images built with podman, the CPU stack started from
docker-compose.yml by podman-compose, driven over HTTP as a client would, stopped, started again.

Slow (a cold build downloads the CPU stack from PyPI): skipped unless DSC_COMPOSE_TEST=1 and podman
is installed; `make compose-test` runs it. deploy/podman.py holds every step; this test times them
and checks what a user relies on.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid

import httpx
import pytest
from openai import OpenAI

from deploy.podman import POSTGRES_IMAGE, Stack, build_images, image_sizes, remove_containers, remove_volumes, run, running, stop, up
from live_server import free_port, wait_ready
from services.demo import DemoConfig, run_demo

pytestmark = pytest.mark.skipif(
    os.environ.get("DSC_COMPOSE_TEST") != "1" or shutil.which("podman") is None,
    reason="the compose stack test runs with DSC_COMPOSE_TEST=1 where podman is installed (make compose-test)",
)
CLIENT_KEY, ADMIN_TOKEN = f"client-{uuid.uuid4().hex}", f"admin-{uuid.uuid4().hex}"
POSTGRES_PASSWORD = f"pg-{uuid.uuid4().hex}"


def _start(stack: Stack) -> float:
    """Start the stack; seconds until the teacher and the student are both ready."""
    started = time.monotonic()
    up(stack, postgres_image=POSTGRES_IMAGE)
    for service in ("teacher", "student"):
        wait_ready(stack.url(service), alive=lambda: running(stack, service), timeout=900, what=service, interval=2,
                   detail=lambda: _logs(stack, service))
    return time.monotonic() - started


def _logs(stack: Stack, service: str) -> str:
    """The container's whole log, unmasked (the test checks that no secret is in it)."""
    return run(["podman", "logs", stack.container(service)], check=False, quiet=True).stdout


def _pairs(teacher_url: str) -> list[dict]:
    pairs, cursor = [], None
    # The demo submitted the job with the admin token; a client key sees only its own tenant's pairs.
    with httpx.Client(base_url=teacher_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60) as client:
        while True:
            page = client.get("/v1/pairs", params={"cursor": cursor} if cursor else None).raise_for_status().json()
            pairs += page["data"]
            if (cursor := page["next_cursor"]) is None:
                return pairs


@pytest.mark.timeout(5400)
def test_cpu_stack_builds_serves_a_distillation_and_keeps_its_data_across_a_restart(tmp_path):
    env_file = tmp_path / "stack.env"
    env_file.write_text("\n".join([
        f"DSC_API_KEYS={CLIENT_KEY}", f"DSC_ADMIN_TOKEN={ADMIN_TOKEN}", f"POSTGRES_PASSWORD={POSTGRES_PASSWORD}",
        f"TEACHER_PORT={free_port()}", f"STUDENT_PORT={free_port()}",
        # Small and quick on two shared cores: transformers starts in seconds; a handful of pairs.
        "DSC_ENGINE=transformers", "DSC_JOB_BATCH_SIZE=8", "DSC_DISTILL_MIN_PAIRS=2",
    ]) + "\n")
    stack = Stack(project=f"dsctest{uuid.uuid4().hex[:8]}", env_file=env_file)
    figures: dict[str, object] = {}
    started = time.monotonic()
    figures["build_seconds"] = {image: round(seconds) for image, seconds in build_images().items()}
    figures["build_total_seconds"] = round(time.monotonic() - started)
    figures["image_bytes"] = image_sizes()
    try:
        figures["first_start_seconds"] = round(_start(stack))
        teacher, student = stack.url("teacher"), stack.url("student")
        config = DemoConfig(train_prompts=6, eval_prompts=2, samples=2, chains=1, max_tokens=16, max_steps=2, acceptance="always",
                            min_reward=-1.0, out_dir=tmp_path / "demo")
        started = time.monotonic()
        summary = run_demo(teacher, student, CLIENT_KEY, ADMIN_TOKEN, config)
        figures["demo_seconds"] = round(time.monotonic() - started)
        assert summary["pairs"] > 0 and summary["accepted_chains"] > 0
        assert (tmp_path / "demo" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # A business client: the official openai package against the student, the promoted student's model.
        client = OpenAI(base_url=f"{student}/v1", api_key=CLIENT_KEY)
        model = next(m.id for m in client.models.list().data if getattr(m, "dsc_kind", None) != "base")
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say something kind."}], max_tokens=16)
        assert answer.choices[0].message.content.strip() and answer.usage.completion_tokens > 0
        pairs = _pairs(teacher)
        assert len(pairs) == summary["accepted_chains"]

        # A clean stop: every process ends on SIGTERM by itself, well before podman's 60 s.
        started = time.monotonic()
        codes = stop(stack)
        figures["stop_seconds"] = round(time.monotonic() - started)
        assert codes == {"teacher": 0, "trainer": 0, "student": 0, "prepare": 0, "postgres": 0}, codes
        for service in codes:
            log = _logs(stack, service)
            assert not [secret for secret in (CLIENT_KEY, ADMIN_TOKEN, POSTGRES_PASSWORD) if secret in log], f"{service} printed a secret"

        # New containers on the same volumes: the pairs and the promoted student are still there.
        remove_containers(stack)
        figures["restart_seconds"] = round(_start(stack))
        assert _pairs(teacher) == pairs
        deadline = time.monotonic() + 300  # ready = the base model loaded; the registry's student follows
        while model not in (served := [m.id for m in client.models.list().data]) and time.monotonic() < deadline:
            time.sleep(2)
        assert model in served, f"the promoted student is not served after the restart: {served}"
        assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8).choices
    finally:
        print(f"\ncompose stack figures: {figures}")
        remove_containers(stack)
        remove_volumes(stack)
