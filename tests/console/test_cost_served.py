"""The cost page's measured columns: served seconds per answer of the teacher's synchronous chain
(this teacher's own metrics) and of the task's student (the student service's /metrics), beside the
token estimate; a real teacher, a real student service with a real adapter, real calls to both."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import httpx

from console_support import ADMIN_TOKEN, CLIENT_KEY, console_settings, running_teacher, store_chains
from live_server import free_port, live_server
from shared.db.models import Student
from shared.db.session import transaction

HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_the_cost_page_shows_the_served_time_per_answer_of_chain_and_student(db_url, tmp_path, model_path, tf_engine, trained_adapter):
    from services.student.app import create_app
    from services.student.runtimes.transformers_runtime import TransformersRuntime

    student_port = free_port()
    settings = console_settings(tmp_path, model_path, db_url, student={"url": f"http://127.0.0.1:{student_port}", "poll_seconds": 0.5})
    runtime = TransformersRuntime(model_path, max_batch=4, window_s=0.01, max_model_len=1024)
    try:
        with running_teacher(settings, tf_engine) as teacher:
            store_chains(teacher.sessions, ["Review the film Up.", "Review Jaws."], job_id="job-cost-1")
            with transaction(teacher.sessions) as session:
                session.add(Student(name="cost-student", version=1, task_name="sentiment", base_model=str(model_path), metrics={},
                                    adapter_path=str(trained_adapter), active=True, promoted_at=datetime.now(timezone.utc)))
            with teacher.console() as console:
                before = console.get("/console/cost", headers=HTML)
                assert before.status_code == 200 and "could not be read now (ConnectError)" in before.text  # no student yet: said, no 500

            with live_server(create_app(settings, runtime=runtime), name="student", port=student_port) as student_url:
                client = {"Authorization": f"Bearer {CLIENT_KEY}"}
                for _ in range(2):
                    answer = httpx.post(f"{student_url}/v1/chat/completions", headers=client, timeout=120, json={
                        "model": "sentiment", "messages": [{"role": "user", "content": "Review Jaws."}], "max_tokens": 4})
                    assert answer.status_code == 200 and answer.json()["model"] == "cost-student-v1", answer.text
                with teacher.api(CLIENT_KEY) as api:
                    chain = api.post("/v1/critique-revise", json={"task": "sentiment", "prompts": ["Review Up.", "Review Heat."],
                                                                  "max_tokens": 8, "store": False})
                    assert chain.status_code == 200, chain.text
                with teacher.console() as console:
                    page = console.get("/console/cost", headers=HTML)
            assert page.status_code == 200
            row = re.search(r"<tr>\s*<td>sentiment</td>(.*?)</tr>", page.text, re.S).group(1)
            cells = re.findall(r'<td class="num">([^<]*)', row)
            chain_s, student_s, ratio = (float(cell.rstrip("×")) for cell in cells[-3:])
            assert chain_s > 0 and student_s > 0
            # the page rounds seconds to 0.01 and the ratio (of the unrounded seconds) to 0.1
            low, high = (chain_s - 0.005) / (student_s + 0.005), (chain_s + 0.005) / (student_s - 0.005)
            assert low - 0.051 <= ratio <= high + 0.051, (chain_s, student_s, ratio)
            metrics = httpx.get(f"{teacher.url}/metrics").text
            assert 'dsc_teacher_sync_answers_total{task="sentiment"} 2.0' in metrics
    finally:
        runtime._executor.shutdown(wait=False, cancel_futures=True)
