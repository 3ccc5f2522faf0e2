"""The student fuzzed against its own OpenAPI schema by Schemathesis (tests/schema_fuzz.py), with
a client key, the admin token and no token: zero failures of any check. Answers are kept short
(student_max_tokens 8) so that the completions schemathesis gets through stay quick on a CPU."""

from __future__ import annotations

import pytest

from schema_fuzz import assert_clean, run_schemathesis
from shared.db.session import upgrade


@pytest.fixture(scope="module")
def short_student(tmp_path_factory, model_store, student_runtime, student_helpers):
    from services.student.app import create_app

    settings = student_helpers["student_settings"](tmp_path_factory.mktemp("fuzzed"), model_store, student_max_tokens=8, student_max_n=2)
    upgrade(settings.resolved_database_url)
    with student_helpers["running_server"](create_app(settings, runtime=student_runtime)) as url:
        yield url


@pytest.mark.timeout(900)
@pytest.mark.parametrize("credential", ["client", "admin", "none"])
def test_student_passes_every_schemathesis_check(short_student, keys, credential):
    token = {"client": keys["client"], "admin": keys["admin"], "none": None}[credential]
    assert_clean(run_schemathesis(short_student, token, max_examples=10), f"the student ({credential})")
