"""The console over real HTTP against a real teacher, on SQLite and on Postgres: login and its
refusals, the same-origin check, every page, escaping of untrusted text, and review (exclude,
undo) as the JSON API, the export and the trainer see it."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from console_support import ADMIN_TOKEN, CLIENT_KEY, XSS, console_settings, running_teacher, store_chains
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import pair_query
from live_server import free_port
from shared.db.models import DistillationRun, JobBatch, Pair, Student, utcnow

PAGES = ["/console/jobs", "/console/pairs", "/console/distillations", "/console/students", "/console/playground", "/console/cost"]
HTML = {"Accept": "text/html,application/xhtml+xml"}


def test_console_pages_login_and_review(db_url, tmp_path, model_path, tf_engine):
    settings = console_settings(tmp_path, model_path, db_url, student={"url": f"http://127.0.0.1:{free_port()}"})  # nothing listens there
    with running_teacher(settings, tf_engine) as teacher:
        job_id = store_chains(teacher.sessions, [XSS, "Review the film Up.", "Review Alien.", "Review Jaws."], job_id="job-console-1")
        with teacher.sessions() as session:
            pair_ids = list(session.scalars(select(Pair.id).order_by(Pair.id)))
        assert len(pair_ids) == 2

        # --- without the cookie: pages redirect to the login form, anything else is a 401 JSON error
        with teacher.console(token=None, follow_redirects=False) as anonymous:
            for path in PAGES + [f"/console/jobs/{job_id}"]:
                page = anonymous.get(path, headers=HTML)
                assert page.status_code == 303 and page.headers["location"] == "/console/login", path
            live = anonymous.get(f"/console/jobs/{job_id}/live")
            assert live.status_code == 401 and live.json()["error"]["type"] == "authentication_error"
            posted = anonymous.post(f"/console/pairs/{pair_ids[0]}/exclude", data={"reason": "x"})
            assert posted.status_code == 401 and posted.json()["error"]["type"] == "authentication_error"
            login_page = anonymous.get("/console/login", headers=HTML)
            assert login_page.status_code == 200 and 'type="password"' in login_page.text

            # a wrong token and a client key are refused, and get no cookie
            for token in ("not-the-token", CLIENT_KEY):
                refused = anonymous.post("/console/login", data={"token": token}, headers=HTML)
                assert refused.status_code == 401 and "not the admin token" in refused.text and "set-cookie" not in refused.headers
            # the admin token: a cookie scripts cannot read, other sites cannot send, for /console only
            accepted = anonymous.post("/console/login", data={"token": ADMIN_TOKEN})
            assert accepted.status_code == 303 and accepted.headers["location"] == "/console/jobs"
            cookie = accepted.headers["set-cookie"]
            secret = cookie.split(";", 1)[0].removeprefix("dsc_console=")
            assert len(secret) >= 40 and ADMIN_TOKEN not in cookie  # a session's random secret, never the token
            assert all(part in cookie for part in ("HttpOnly", "Secure", "SameSite=strict", "Path=/console"))
            # a login posted from another site is refused before the token is even read
            assert anonymous.post("/console/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://evil.example"}).status_code == 403

        # the cookie opens the console only: the JSON API still wants a bearer token
        with teacher.console() as console, teacher.api() as api:
            assert console.get("/v1/jobs").status_code == 401
            wrong = console.get("/console/jobs", headers={**HTML, "Cookie": "dsc_console=guessed"})
            assert wrong.status_code == 303 and wrong.headers["location"] == "/console/login"

            # --- every page, with the security headers
            for path in PAGES + [f"/console/jobs/{job_id}", f"/console/jobs/{job_id}/live", f"/console/pairs?job={job_id}&accepted=yes",
                                 "/console/pairs?excluded=no&min_gain=0.5", f"/console/distillations?task=sentiment&jobs={job_id}"]:
                page = console.get(path, headers=HTML)
                assert page.status_code == 200, (path, page.text[:500])
                assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-content-type-options"] == "nosniff"
            assert console.get("/console/pairs?min_gain=lots", headers=HTML).status_code == 400
            assert console.get("/console/jobs/no-such-job", headers=HTML).status_code == 404

            # --- a job's failed batches, with their errors (escaped too)
            with teacher.sessions() as session, session.begin():
                session.add(JobBatch(job_id=job_id, start=0, end=2, status="succeeded", attempt=2, failures=1,
                                     error="RuntimeError: <engine> fell over"))
            job_page = console.get(f"/console/jobs/{job_id}", headers=HTML).text
            assert "Failures" in job_page and "RuntimeError: &lt;engine&gt; fell over" in job_page and "<td>0–1</td>" in job_page

            # --- untrusted text is shown as text
            pairs_page = console.get(f"/console/pairs?job={job_id}", headers=HTML).text
            assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;Review the film &lt;b&gt;Heat&lt;/b&gt;." in pairs_page
            assert "<script>document.title" not in pairs_page and "<b>Heat</b>" not in pairs_page

            # --- the job list shows the job's figures: 2 of 4 chains accepted, mean reward 0.1 → 0.45
            jobs_page = console.get("/console/jobs", headers=HTML).text
            assert "2/4 (50%)" in jobs_page and "+0.100 → +0.450" in jobs_page

            # --- review: cross-site posts are refused, then exclude with a reason, and undo
            target = pair_ids[0]
            assert console.post(f"/console/pairs/{target}/exclude", data={"reason": "off topic"},
                                headers={"Origin": "http://evil.example"}).status_code == 403
            assert console.post(f"/console/pairs/{target}/exclude", data={"reason": "off topic"},
                                headers={"Origin": "", "Referer": ""}).status_code == 403
            blank = console.post(f"/console/pairs/{target}/exclude", data={"reason": "  "})
            assert blank.status_code == 400 and blank.json()["error"]["param"] == "reason"
            assert console.post("/console/pairs/999999/exclude", data={"reason": "gone"}).status_code == 404
            done = console.post(f"/console/pairs/{target}/exclude", data={"reason": "off <i>topic</i>", "back": "https://evil.example/x"},
                                follow_redirects=False)
            assert done.status_code == 303 and done.headers["location"] == f"/console/pairs#pair-{target}"

            listed = {p["id"]: p for p in api.get("/v1/pairs").json()["data"]}
            assert listed[target]["excluded"] is True and listed[target]["excluded_reason"] == "off <i>topic</i>"
            assert listed[target]["excluded_at"] is not None and listed[pair_ids[1]]["excluded"] is False
            assert [p["id"] for p in api.get("/v1/pairs", params={"excluded": "false"}).json()["data"]] == [pair_ids[1]]
            exported = [json.loads(line) for line in api.get("/v1/pairs/export").text.splitlines()]
            assert [(row["excluded"], row["excluded_reason"]) for row in exported] == [(True, "off <i>topic</i>"), (False, None)]
            assert len(api.get("/v1/pairs/export", params={"excluded": "false"}).text.splitlines()) == 1
            with teacher.sessions() as session:  # the trainer's selection leaves it out
                assert [p.id for p in session.scalars(pair_query(DistillationConfig(task="sentiment")))] == [pair_ids[1]]
            review = console.get("/console/pairs?excluded=yes", headers=HTML).text
            assert f'id="pair-{target}"' in review and "off &lt;i&gt;topic&lt;/i&gt;" in review and f'id="pair-{pair_ids[1]}"' not in review

            # the same review through the JSON API: admin only, a reason required, undone by DELETE
            other = pair_ids[1]
            with teacher.api(CLIENT_KEY) as client:
                assert client.put(f"/admin/pairs/{other}/exclusion", json={"reason": "dup"}).status_code == 403
            assert api.put(f"/admin/pairs/{other}/exclusion", json={"reason": " "}).json()["error"]["param"] == "reason"
            assert api.put("/admin/pairs/999999/exclusion", json={"reason": "gone"}).status_code == 404
            put = api.put(f"/admin/pairs/{other}/exclusion", json={"reason": "  a duplicate of pair 1 "})
            assert put.status_code == 200 and (put.json()["excluded"], put.json()["excluded_reason"]) == (True, "a duplicate of pair 1")
            deleted = api.delete(f"/admin/pairs/{other}/exclusion")
            assert deleted.status_code == 200 and (deleted.json()["excluded"], deleted.json()["excluded_reason"]) == (False, None)

            undone = console.post(f"/console/pairs/{target}/include", data={"back": "/console/pairs?excluded=yes"}, follow_redirects=False)
            assert undone.status_code == 303 and undone.headers["location"] == f"/console/pairs?excluded=yes#pair-{target}"
            after = {p["id"]: p for p in api.get("/v1/pairs").json()["data"]}[target]
            assert (after["excluded"], after["excluded_reason"], after["excluded_at"]) == (False, None, None)
            with teacher.sessions() as session:
                assert len(list(session.scalars(pair_query(DistillationConfig(task="sentiment"))))) == 2

            # --- a form that does not validate is shown again with the API's message
            bad = console.post("/console/distillations", data={"_form": "1", "task": "sentiment", "lora_r": "0"}, headers=HTML)
            assert bad.status_code == 400 and "lora_r" in bad.text and 'id="form-error"' in bad.text
            bad_job = console.post("/console/jobs", data={"_form": "1", "task": "no-such-task"}, headers=HTML)
            assert bad_job.status_code == 404 and "no-such-task" in bad_job.text

            # --- queue a job from the form (no job workers here: it stays queued) and cancel it
            queued = console.post("/console/jobs", data={"_form": "1", "task": "sentiment", "prompts": "One.\nTwo.", "chains": "1",
                                                         "max_tokens": "8"}, follow_redirects=False)
            assert queued.status_code == 303 and queued.headers["location"].startswith("/console/jobs/")
            new_job = queued.headers["location"].rsplit("/", 1)[-1]
            assert api.get(f"/v1/jobs/{new_job}").json()["status"] == "queued"
            assert console.post(f"/console/jobs/{new_job}/cancel", follow_redirects=False).status_code == 303
            assert api.get(f"/v1/jobs/{new_job}").json()["status"] == "cancelled"
            assert 'data-final' in console.get(f"/console/jobs/{new_job}/live").text  # the page stops refreshing

            # --- start a distillation from the form (its defaults, two overridden) and cancel it while queued
            started = console.post("/console/distillations", data={"_form": "1", "task": "sentiment", "jobs": job_id, "max_steps": "2",
                                                                   "batch_size": "2", "best_per_prompt": "on", "collapse_check": "on"},
                                   follow_redirects=False)
            assert started.status_code == 303, started.text
            run_id = started.headers["location"].rsplit("/", 1)[-1]
            run = api.get(f"/admin/distillations/{run_id}").json()
            assert run["status"] == "queued" and run["config"]["jobs"] == [job_id] and run["config"]["max_steps"] == 2
            assert run["config"]["learning_rate"] == 1e-3 and run["config"]["merge"] is False  # an unticked box is false
            assert (run["config"]["objective"], run["config"]["epochs"]) == ("sft", 3.0)  # blank recipe fields: sentiment sets none
            page = console.get("/console/distillations", headers=HTML).text
            assert "(safety: dpo), else sft." in page and "Unset:" not in page  # what blank means per task, said once
            assert console.get(f"/console/distillations/{run_id}", headers=HTML).status_code == 200
            with teacher.sessions() as session, session.begin():  # what a worker writes during a preference run's reference pass
                session.get(DistillationRun, run_id).progress = {**run["progress"], "phase": "reference log-probs",
                                                                 "passes": {"reference log-probs": {"done": 96, "total": 262}}}
            assert "reference log-probs 96/262 pairs" in console.get(f"/console/distillations/{run_id}/live").text
            assert console.post(f"/console/distillations/{run_id}/cancel", follow_redirects=False).status_code == 303
            assert api.get(f"/admin/distillations/{run_id}").json()["status"] == "cancelled"

            # --- roll back: the task's previously promoted student, after a confirmation; the gate wants force
            with teacher.sessions() as session, session.begin():
                now = utcnow()
                session.add_all([
                    Student(id="student-a", name="sentiment-student", version=1, task_name="sentiment", base_model="m", metrics={},
                            active=False, promoted_at=now - timedelta(hours=1)),
                    Student(id="student-b", name="sentiment-student", version=2, task_name="sentiment", base_model="m", metrics={},
                            active=True, promoted_at=now, round=2, parent_id="student-a"),
                ])
            students_page = console.get("/console/students", headers=HTML).text
            assert 'href="/console/students/student-a/promote">sentiment-student-v1</a>' in students_page
            # the lineage: student-b's pairs were sampled by student-a (round 2), student-a's by the teacher
            assert 'round 2<br><small>sampled by <a href="#student-student-a">sentiment-student-v1</a>' in students_page
            assert 'round 1<br><small class="muted">sampled by the teacher' in students_page
            confirm = console.get("/console/students/student-a/promote", headers=HTML).text
            assert "Roll back to sentiment-student-v1?" in confirm and "sentiment-student-v2" in confirm and 'name="force"' in confirm
            refused = console.post("/console/students/student-a/promote", headers=HTML)
            assert refused.status_code == 409 and "force=true" in refused.text
            assert [s["id"] for s in api.get("/admin/students", params={"active": True}).json()["data"]] == ["student-b"]
            rolled = console.post("/console/students/student-a/promote", data={"force": "true"}, follow_redirects=False)
            assert rolled.status_code == 303 and rolled.headers["location"] == "/console/students"
            assert [s["id"] for s in api.get("/admin/students", params={"active": True}).json()["data"]] == ["student-a"]

            # --- the playground says so when the student service does not answer
            silent = console.post("/console/playground", data={"prompt": "Hello?", "model": "student"}, headers=HTML)
            assert silent.status_code == 200 and silent.text.count("the student service did not answer") == 2

            # --- logging out clears the cookie and ends the session on the server: the same cookie opens nothing
            out = console.post("/console/logout", follow_redirects=False)
            assert out.status_code == 303 and 'dsc_console=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
            replayed = console.get("/console/jobs", headers=HTML, follow_redirects=False)
            assert replayed.status_code == 303 and replayed.headers["location"] == "/console/login"


def test_without_tokens_the_console_is_as_open_as_the_api(tmp_path, model_path, tf_engine):
    settings = console_settings(tmp_path, model_path, f"sqlite:///{tmp_path / 'open.db'}", api_keys=[], admin_token=None)
    with running_teacher(settings, tf_engine) as teacher, teacher.console(token=None, follow_redirects=False) as console:
        page = console.get("/console/jobs", headers=HTML)
        assert page.status_code == 200 and "open to anyone who can reach this port" in page.text and "Log out" not in page.text
        assert console.post("/console/login", data={"token": "anything"}).headers["location"] == "/console/jobs"
