"""Settings keep their environment variables: DSC_VLLM_MAX_MODEL_LEN still sets max_model_len
(which every vLLM engine and the student's transformers runtime read), and the flat names of the
grouped settings (DSC_STUDENT_MAX_PENDING) set their fields in the groups (settings.student.max_pending)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.engines.vllm_options import engine_settings
from shared.settings import Settings, _at_least_one, environment_names, setting_groups


@pytest.mark.parametrize("variable", ["DSC_MAX_MODEL_LEN", "DSC_VLLM_MAX_MODEL_LEN", "dsc_vllm_max_model_len"])
def test_max_model_len_is_read_from_the_new_and_the_old_variable(monkeypatch, variable):
    monkeypatch.setenv(variable, "1024")
    settings = Settings()
    assert settings.max_model_len == 1024
    assert engine_settings(settings)["max_model_len"] == 1024


def test_the_new_variable_wins_over_the_old_one_and_arguments_over_both(monkeypatch):
    monkeypatch.setenv("DSC_VLLM_MAX_MODEL_LEN", "1024")
    monkeypatch.setenv("DSC_MAX_MODEL_LEN", "512")
    assert Settings().max_model_len == 512
    assert Settings(max_model_len=300).max_model_len == 300


def test_max_model_len_defaults_and_refuses_nonsense(monkeypatch):
    monkeypatch.delenv("DSC_MAX_MODEL_LEN", raising=False)
    monkeypatch.delenv("DSC_VLLM_MAX_MODEL_LEN", raising=False)
    assert Settings().max_model_len == 2048
    monkeypatch.setenv("DSC_VLLM_MAX_MODEL_LEN", "long")
    with pytest.raises(ValueError, match="MAX_MODEL_LEN"):  # the error names the setting by its current variable
        Settings()


# --- the groups keep the flat variables (shared/settings.py) --------------------------------------

FLAT = [  # variable, value, path of the field it sets, the value read
    ("DSC_MAX_SYNC_PROMPTS", "3", "teacher.max_sync_prompts", 3),
    ("DSC_MAX_QUEUED_JOBS", "5", "teacher.max_queued_jobs", 5),
    ("DSC_TEACHER_PORT", "9100", "teacher.port", 9100),
    ("DSC_TEACHER_THREADS", "2", "teacher.threads", 2),
    ("DSC_EXPORT_PAGE_SIZE", "50", "teacher.export_page_size", 50),
    ("DSC_SAMPLER_SCHEDULE", "phases", "teacher.sampler_schedule", "phases"),
    ("DSC_JOB_BATCH_SIZE", "4", "jobs.batch_size", 4),
    ("dsc_job_workers", "0", "jobs.workers", 0),  # case-insensitive, as before
    ("DSC_STUDENT_MAX_PENDING", "7", "student.max_pending", 7),
    ("DSC_STUDENT_URL", "http://student:8001/", "student.resolved_url", "http://student:8001"),
    ("DSC_STUDENT_DEFAULT_MAX_TOKENS", "32", "student.default_max_tokens", 32),
    ("DSC_VLLM_KV_CACHE_GIB", "2.5", "vllm.kv_cache_gib", 2.5),
    ("DSC_VLLM_ENFORCE_EAGER", "true", "vllm.enforce_eager", True),
    ("DSC_OPENAI_TIMEOUT", "9", "openai.timeout", 9.0),
    ("DSC_TRAINER_PROCESSES", "2", "trainer.processes", 2),
    ("DSC_TRAINER_DEVICE", "cpu", "trainer.device", "cpu"),
    ("DSC_TRAINER_KEEP_CHECKPOINTS", "3", "trainer.keep_checkpoints", 3),
    ("DSC_DISTILL_MIN_PAIRS", "2", "distill.min_pairs", 2),
    ("DSC_REWARD_HTTP_ALLOW_PRIVATE", "1", "reward_http.allow_private", True),
    ("DSC_REWARD_HTTP_ALLOW", "scorer.internal, 10.2.0.0/16", "reward_http.allow", ["scorer.internal", "10.2.0.0/16"]),
    ("DSC_ENGINE", "transformers", "engine", "transformers"),
]


def _read(settings: Settings, path: str) -> object:
    value: object = settings
    for name in path.split("."):
        value = getattr(value, name)
    return value


@pytest.mark.parametrize("variable, value, path, expected", FLAT, ids=[row[0] for row in FLAT])
def test_a_flat_variable_sets_its_field_in_the_group(monkeypatch, variable, value, path, expected):
    monkeypatch.setenv(variable, value)
    assert _read(Settings(), path) == expected


def test_every_field_has_one_variable_and_the_old_names_are_among_them():
    names = environment_names()
    groups = setting_groups()
    fields = {f"{group}.{name}" for group, cls in groups.items() for name in cls.model_fields}
    fields |= {name for name in Settings.model_fields if name not in groups}
    assert set(names.values()) == fields  # each field is reachable by a flat variable
    assert names["DSC_VLLM_MAX_MODEL_LEN"] == names["DSC_MAX_MODEL_LEN"] == "max_model_len"
    assert {"DSC_API_KEYS", "DSC_RATE_LIMIT", "DSC_STUDENT_POLL_SECONDS", "DSC_JOB_MAX_ATTEMPTS", "DSC_MAX_PROMPT_CHARS",
            "DSC_TRAINER_EVAL_MEMORY_UTILIZATION", "DSC_VLLM_TENSOR_PARALLEL_SIZE", "DSC_OPENAI_BASE_URL"} <= set(names)


def test_the_comma_lists_and_digests_still_load(monkeypatch):
    monkeypatch.setenv("DSC_API_KEYS", "first-key, second-key,")
    monkeypatch.setenv("DSC_ADMIN_TOKEN", "the-admin")
    settings = Settings()
    assert len(settings.api_keys) == 2 and all(key.startswith("sha256:") for key in settings.api_keys)
    assert settings.admin_token.startswith("sha256:")


def test_the_nested_form_works_and_wins_over_the_flat_name(monkeypatch):
    monkeypatch.setenv("DSC_STUDENT_MAX_PENDING", "7")
    monkeypatch.setenv("DSC_STUDENT__MAX_PENDING", "9")
    monkeypatch.setenv("DSC_JOBS__POLL_SECONDS", "0.5")
    settings = Settings()
    assert (settings.student.max_pending, settings.jobs.poll_seconds) == (9, 0.5)


def test_arguments_win_field_by_field_and_the_rest_of_the_group_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DSC_STUDENT_MAX_PENDING", "7")
    monkeypatch.setenv("DSC_STUDENT_MAX_N", "2")
    settings = Settings(student={"max_pending": 3})
    assert (settings.student.max_pending, settings.student.max_n, settings.student.max_batch) == (3, 2, 16)


def test_the_env_file_keeps_its_flat_names(monkeypatch, tmp_path):
    monkeypatch.delenv("DSC_MAX_QUEUED_JOBS", raising=False)
    monkeypatch.setenv("DSC_TRAINER_MAX_ATTEMPTS", "4")
    (tmp_path / ".env").write_text("DSC_MAX_QUEUED_JOBS=6\nDSC_TRAINER_MAX_ATTEMPTS=5\nDSC_SOMETHING_ELSE=1\n")
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert (settings.teacher.max_queued_jobs, settings.trainer.max_attempts) == (6, 4)  # the environment wins over .env


@pytest.mark.parametrize("overrides, where", [
    ({"trainer": {"processes": 0}}, "trainer.processes"),
    ({"vllm": {"pipeline_parallel_size": 0}}, "vllm.pipeline_parallel_size"),
    ({"student": {"max_pendng": 1}}, "student.max_pendng"),  # a misspelt field is an error, not ignored
    ({"reward_http": {"allow": "http://scorer/"}}, "reward_http.allow"),
    ({"dtype": "float8"}, "dtype"),
    # counts, leases and polls that would make a service misbehave refuse to start instead
    ({"jobs": {"max_failures": 0}}, "jobs.max_failures"),
    ({"jobs": {"lease_seconds": 0}}, "jobs.lease_seconds"),
    ({"jobs": {"max_attempts": -1}}, "jobs.max_attempts"),
    ({"jobs": {"poll_seconds": 0}}, "jobs.poll_seconds"),
    ({"jobs": {"workers": -1}}, "jobs.workers"),
    ({"trainer": {"threads": 0}}, "trainer.threads"),
    ({"trainer": {"poll_seconds": -1}}, "trainer.poll_seconds"),
    ({"trainer": {"max_attempts": 0}}, "trainer.max_attempts"),
    ({"student": {"max_pending": 0}}, "student.max_pending"),
    ({"teacher": {"max_concurrent_sync": 0}}, "teacher.max_concurrent_sync"),
    ({"distill": {"min_pairs": 0}}, "distill.min_pairs"),
])
def test_bad_values_name_the_field_in_its_group(overrides, where):
    with pytest.raises(ValidationError) as error:
        Settings(**overrides)
    assert [".".join(map(str, item["loc"])) for item in error.value.errors()] == [where]


def test_cli_overrides_win_over_the_environment_and_absent_flags_leave_it(monkeypatch):
    from services.cli import load_settings

    monkeypatch.setenv("DSC_TEACHER_PORT", "9100")
    monkeypatch.setenv("DSC_JOB_WORKERS", "3")
    monkeypatch.setenv("DSC_ENGINE", "transformers")
    settings = load_settings(engine=None, host="0.0.0.0", teacher={"port": 9200}, jobs={"workers": None})
    assert (settings.engine, settings.host, settings.teacher.port, settings.jobs.workers) == ("transformers", "0.0.0.0", 9200, 3)


def test_cli_flags_reach_the_groups(monkeypatch):
    from typer.testing import CliRunner

    import services.teacher.app
    import services.trainer.worker
    from services.cli import app

    seen = {}
    monkeypatch.setattr(services.teacher.app, "serve", lambda settings, **where: seen.update(teacher=(settings, where)))
    monkeypatch.setattr(services.trainer.worker, "work", lambda settings, **_: seen.update(trainer=settings))
    monkeypatch.setenv("DSC_JOB_BATCH_SIZE", "5")
    runner = CliRunner()
    assert runner.invoke(app, ["teacher", "serve", "--port", "9300", "--workers", "0", "--engine", "transformers"]).exit_code == 0
    settings, where = seen["teacher"]
    assert (where["port"], settings.teacher.port, settings.jobs.workers, settings.jobs.batch_size) == (9300, 9300, 0, 5)
    assert runner.invoke(app, ["trainer", "work", "--processes", "2", "--threads", "1", "--device", "cpu"]).exit_code == 0
    assert (seen["trainer"].trainer.processes, seen["trainer"].trainer.threads, seen["trainer"].trainer.device) == (2, 1, "cpu")
    result = runner.invoke(app, ["trainer", "work", "--processes", "0"])
    assert result.exit_code == 2 and "trainer.processes" in result.output and "must be at least 1" in result.output


def test_every_numeric_setting_has_a_lower_bound():
    """A 0 or negative count, port or duration must stop the service at start with the setting's
    name (test_bad_values_name_the_field_in_its_group), not make it misbehave later."""
    import annotated_types
    from pydantic import BaseModel

    unbounded = []

    def scan(model: type[BaseModel], prefix: str = "") -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                scan(annotation, f"{prefix}{name}.")
                continue
            numeric = annotation in (int, float, int | None, float | None)
            # ParallelSize: its own check, with a message that says what 1 means
            bounded = any(isinstance(item, (annotated_types.Ge, annotated_types.Gt, annotated_types.Interval)) or
                          getattr(item, "func", None) is _at_least_one for item in field.metadata)
            if numeric and not bounded:
                unbounded.append(prefix + name)

    scan(Settings)
    assert unbounded == [], unbounded
