"""The teacher fuzzed against its own OpenAPI schema by Schemathesis (tests/schema_fuzz.py), with
a client key, the admin token and no token: zero failures of any check."""

from __future__ import annotations

import pytest

from schema_fuzz import assert_clean, run_schemathesis


@pytest.mark.timeout(900)
@pytest.mark.parametrize("credential", ["client", "admin", "none"])
def test_teacher_passes_every_schemathesis_check(make_teacher, credential):
    teacher = make_teacher()
    token = {"client": teacher.client_key, "admin": teacher.admin_token, "none": None}[credential]
    assert_clean(run_schemathesis(teacher.url, token, max_examples=30), f"the teacher ({credential})")
