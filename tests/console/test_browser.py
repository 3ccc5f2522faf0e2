"""The console in a real headless Chromium (Debian's package, driven by Playwright) against a real
teacher on the transformers engine, a real trainer worker and a real student service: log in,
queue a small job and watch it finish, exclude a pair, start a distillation of a few steps and
watch it finish, promote the student, ask the playground — with a screenshot of every page.

Screenshots go to $DSC_CONSOLE_SCREENSHOTS when it is set, else to the test's tmp directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from console_support import ADMIN_TOKEN, CLIENT_KEY, XSS, console_settings, running_teacher
from live_server import live_server, wait_for
from shared.db.models import ChainRecord, DistillationRun, Pair
from shared.db.session import upgrade

CHROMIUM = os.environ.get("DSC_CHROMIUM", "/usr/bin/chromium")
FILMS = ["Review the film Casablanca.", "What did you think of the movie Jaws?", "Describe the film Vertigo briefly.",
         "Give your opinion of the film Psycho."]

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (requirements/cpu.lock.txt)")
if not shutil.which(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)", allow_module_level=True)


@pytest.fixture()
def shots(tmp_path: Path):
    folder = Path(os.environ.get("DSC_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []

    def shoot(page, name: str) -> None:
        path = folder / f"{len(taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    shoot.taken = taken
    return shoot


@pytest.mark.timeout(900)
def test_console_drives_the_whole_flow_in_a_browser(tmp_path, model_path, tf_engine, shots):
    from services.student.app import create_app as create_student
    from services.trainer.worker import TrainerWorker

    database = f"sqlite:///{tmp_path / 'dsc.db'}"
    upgrade(database)
    student_settings = console_settings(tmp_path / "student", model_path, database, student={"poll_seconds": 0.5, "max_tokens": 64})
    with live_server(create_student(student_settings), name="student", ready_timeout=300) as student_url:
        settings = console_settings(tmp_path, model_path, database, jobs={"workers": 1, "batch_size": 2},
                                    student={"url": student_url}, trainer={"poll_seconds": 0.2, "lease_seconds": 60})
        with running_teacher(settings, tf_engine) as teacher, playwright_api.sync_playwright() as playwright:
            trainer = TrainerWorker(settings, teacher.sessions).start()
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                _drive(browser, teacher, student_url, shots)
            finally:
                browser.close()
                trainer.stop()
    assert len(shots.taken) >= 8 and all(path.stat().st_size > 10_000 for path in shots.taken)


def _drive(browser, teacher, student_url: str, shots) -> None:
    console = f"{teacher.url}/console"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before cancelling

    # --- without the cookie: the login form; a wrong token is refused
    page.goto(f"{console}/pairs")
    assert page.url == f"{console}/login"
    page.fill("#token", "not-the-admin-token")
    page.click("button[type=submit]")
    assert "not the admin token" in page.inner_text(".error")
    shots(page, "login-refused")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    assert page.url == f"{console}/jobs"
    cookie = next(c for c in page.context.cookies() if c["name"] == "dsc_console")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    assert page.evaluate(f"fetch('{console}/jobs/none/live', {{credentials: 'omit'}}).then(r => r.status)") == 401

    # --- a small job, from the form; its page follows the progress live
    page.select_option("select[name=task]", "sentiment")
    page.fill("textarea[name=prompts]", "\n".join([XSS, *FILMS]))
    page.fill("input[name=chains]", "1")
    page.select_option("select[name=acceptance]", "always")
    page.fill("input[name=max_tokens]", "12")
    page.fill("input[name=seed]", "7")
    page.click("text=Queue job")
    assert "/console/jobs/" in page.url, page.inner_text("#form-error")
    job_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_selector("#job-status:text('succeeded')", timeout=300_000)  # refreshed by the page's script, no reload
    assert page.title() != "pwned"
    shots(page, "job")
    page.goto(f"{console}/jobs")
    assert job_id[:12] in page.inner_text("#jobs")
    shots(page, "jobs")

    # --- its chains; a prompt with <script> is shown as text; exclude a pair
    page.goto(f"{console}/pairs?job={job_id}")
    prompts = page.locator(".prompt").all_inner_texts()
    assert XSS in prompts and page.title() != "pwned" and page.evaluate("document.querySelectorAll('main script').length") == 0
    with teacher.sessions() as session:
        pair_ids = list(session.scalars(select(Pair.id).where(Pair.job_id == job_id).order_by(Pair.id)))
        moved = list(session.scalars(select(ChainRecord.id).where(ChainRecord.job_id == job_id, ChainRecord.final_text != ChainRecord.initial_text)))
    # acceptance=always: every chain whose revision changed its answer is a pair (which ones, the
    # machine's arithmetic decides: 12-token answers differ between CPU kinds); the flow needs two
    assert len(pair_ids) == len(moved) >= 2, (pair_ids, moved)
    excluded = pair_ids[0]
    page.fill(f"#pair-{excluded} input[name=reason]", "mentions markup, not the film")
    page.click(f"#pair-{excluded} button.danger")
    page.wait_for_selector(f"#pair-{excluded} .badge.excluded")
    assert "mentions markup, not the film" in page.inner_text(f"#pair-{excluded} .reason")
    shots(page, "pairs")

    # --- a distillation of a few steps, from the job page's link (task and job filled in)
    page.goto(f"{console}/jobs/{job_id}")
    page.click("text=Distil its pairs")
    assert page.input_value("input[name=jobs]") == job_id
    for name, value in {"max_steps": "2", "batch_size": "2", "max_seq_len": "96", "max_eval_prompts": "2", "eval_samples": "2",
                        "eval_max_tokens": "8", "min_reward": "-1"}.items():  # any reward: the sampled answers are short
        page.fill(f"input[name={name}]", value)
    page.uncheck("input[name=collapse_check]")
    page.click("text=Start distillation")
    assert "/console/distillations/" in page.url, page.inner_text("#form-error")
    run_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_selector("#run-status:text('succeeded')", timeout=480_000)
    page.wait_for_selector("#loss-chart")
    assert "student − base" in page.inner_text("#evaluation")
    shots(page, "distillation")
    with teacher.sessions() as session:
        run = session.get(DistillationRun, run_id)
        trained = [json.loads(line)["pair_id"] for line in (Path(run.artifact_dir) / "snapshot.jsonl").read_text().splitlines()]
    assert excluded not in trained and set(trained) <= set(pair_ids[1:])
    page.goto(f"{console}/distillations")
    shots(page, "distillations")

    # --- promote the new student (two evaluation prompts cannot pass the gate: force, after confirming)
    page.goto(f"{console}/students")
    page.click("#registry >> text=Promote…")
    assert "Promote sentiment-student-v1?" in page.inner_text("h1")
    shots(page, "promote-confirm")
    page.check("input[name=force]")
    page.click("text=Yes, make it active")
    assert page.url == f"{console}/students"
    assert "sentiment-student-v1" in page.inner_text("#active")
    shots(page, "students")

    # --- the playground: base and the task's student through the student service
    with httpx.Client(base_url=student_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as student:
        wait_for(lambda: any(m["id"] == "sentiment-student-v1" for m in student.get("/v1/models").json()["data"]), 120,
                 "the student service to load the promoted student")
    page.goto(f"{console}/playground")
    page.fill("textarea[name=prompt]", "Review the film Heat in one sentence.")
    page.select_option("select[name=model]", "sentiment")
    page.fill("input[name=max_tokens]", "16")
    page.click("text=Ask both")
    answers = page.locator("#answers .answer")
    assert answers.count() == 2 and page.locator("#answers .error").count() == 0
    assert "smollm2" in answers.nth(0).inner_text().lower() or "base" in answers.nth(0).inner_text()
    assert "sentiment-student-v1" in answers.nth(1).inner_text()
    shots(page, "playground")

    page.goto(f"{console}/cost")
    assert "Estimated." in page.inner_text(".note") and "sentiment" in page.inner_text("#cost")
    shots(page, "cost")

    # --- logging out: the pages want the login again
    page.click("text=Log out")
    assert page.url == f"{console}/login"
    page.goto(f"{console}/students")
    assert page.url == f"{console}/login"


@pytest.mark.timeout(300)
def test_a_browser_session_ends_at_logout_and_at_expiry(tmp_path, model_path, tf_engine):
    """The cookie a browser held before logging out (a copy an attacker kept) opens nothing; nor
    does one past the session's lifetime, even when the browser would still send it."""
    settings = console_settings(tmp_path, model_path, f"sqlite:///{tmp_path / 'dsc.db'}", console_session_hours=3 / 3600)
    with running_teacher(settings, tf_engine) as teacher, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            page = context.new_page()
            console = f"{teacher.url}/console"

            def log_in() -> dict:
                page.goto(f"{console}/login")
                page.fill("#token", ADMIN_TOKEN)
                page.click("button[type=submit]")
                assert page.url == f"{console}/jobs"
                return next(c for c in context.cookies() if c["name"] == "dsc_console")

            def replay(cookie: dict) -> str:
                """Put the old cookie back, with no expiry of its own, and open a page."""
                context.clear_cookies()
                context.add_cookies([{key: cookie[key] for key in ("name", "value", "domain", "path", "secure", "httpOnly", "sameSite")}])
                page.goto(f"{console}/students")
                return page.url

            before_logout = log_in()
            page.click("text=Log out")
            assert page.url == f"{console}/login"
            assert replay(before_logout) == f"{console}/login"  # revoked on the server at logout

            session = log_in()
            assert replay(session) == f"{console}/students"  # the same cookie, still live
            page.wait_for_timeout(3500)
            assert replay(session) == f"{console}/login"  # past its lifetime
        finally:
            browser.close()
