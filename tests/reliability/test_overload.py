"""Overload: both services flooded well past their bounds, in three waves. The excess is answered
429 with Retry-After (never a 5xx or a dropped connection), what was admitted is served, memory
does not grow from wave to wave, and both serve normally afterwards.

Bounds set small on purpose: two synchronous sampling calls and two queued jobs on the teacher
(no job workers, so the queue only fills), four sequences in flight on the student."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

WAVES, FLOOD = 3, 48
SYNC_SLOTS, QUEUED_JOBS, STUDENT_PENDING = 2, 2, 4
MEMORY_GROWTH_MIB = 150  # between the first and the last wave; the waves are alike, so a leak shows as growth


def _flood(client: httpx.Client, requests: list[tuple[str, dict]]) -> Counter:
    """Send every request at once (one thread each); count the answers by status."""
    def send(request: tuple[str, dict]) -> tuple[int, str | None, dict]:
        path, body = request
        response = client.post(path, json=body)
        return response.status_code, response.headers.get("retry-after"), response.json()

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))
    for status, retry_after, body in answers:
        assert status in (200, 202, 429), (status, body)
        if status == 429:
            assert retry_after is not None and int(retry_after) >= 1
            assert set(body["error"]) >= {"type", "message"}
    return Counter(status for status, _, _ in answers)


def test_teacher_and_student_push_back_under_a_flood_and_recover(services, tmp_path):
    launcher = services(f"sqlite:///{tmp_path / 'dsc.db'}", job_workers=0, max_concurrent_sync=SYNC_SLOTS,
                        max_queued_jobs=QUEUED_JOBS, student_max_pending=STUDENT_PENDING)
    teacher = launcher.wait_ready(launcher.start("teacher", "serve", name="teacher"))
    student = launcher.wait_ready(launcher.start("student", "serve", name="student"))
    sync = ("/v1/critique-revise", {"task": "sentiment", "prompts": ["Review a dull film."], "max_tokens": 6, "store": False})
    chat = ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})
    job = ("/v1/jobs", {"task": "sentiment", "prompts": ["Review a dull film."], "max_tokens": 6})
    figures: list[str] = []
    with teacher.client(timeout=600) as teacher_client, student.client(timeout=600) as student_client:
        assert teacher_client.post(*sync[:1], json=sync[1]).status_code == 200  # warm: first-call allocations are not a leak
        assert student_client.post(*chat[:1], json=chat[1]).status_code == 200
        memory = []
        for wave in range(WAVES):
            synced = _flood(teacher_client, [sync] * FLOOD)
            queued = _flood(teacher_client, [job] * FLOOD)
            chatted = _flood(student_client, [chat] * FLOOD)
            assert synced[429] > 0 and synced[200] >= SYNC_SLOTS
            assert queued[202] == QUEUED_JOBS and queued[429] == FLOOD - QUEUED_JOBS  # the queue bound is exact
            assert chatted[429] > 0 and chatted[200] >= STUDENT_PENDING
            memory.append((teacher.rss_mib(), student.rss_mib()))
            figures.append(f"wave {wave + 1}: teacher sync {dict(synced)}, jobs {dict(queued)}; student {dict(chatted)}; "
                           f"RSS teacher {memory[-1][0]:.0f} MiB, student {memory[-1][1]:.0f} MiB")
            for listed in teacher_client.get("/v1/jobs", params={"status": "queued"}).json()["data"]:  # make room again
                assert teacher_client.post(f"/v1/jobs/{listed['id']}/cancel").status_code == 200

        # Afterwards both serve normally, one request after another.
        assert [teacher_client.post(*sync[:1], json=sync[1]).status_code for _ in range(2)] == [200, 200]
        assert [student_client.post(*chat[:1], json=chat[1]).status_code for _ in range(2)] == [200, 200]
        assert teacher_client.post(*job[:1], json=job[1]).status_code == 202
    growth = [last - first for first, last in zip(memory[0], memory[-1])]
    print("\n" + "\n".join(figures) + f"\nRSS growth first→last wave: teacher {growth[0]:+.0f} MiB, student {growth[1]:+.0f} MiB")
    assert max(growth) < MEMORY_GROWTH_MIB, figures
    assert teacher.process.poll() is None and student.process.poll() is None
