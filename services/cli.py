"""The `dsc` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.demo import DemoConfig as DemoDefaults
from shared.errors import DscError
from shared.settings import BUNDLED_MODEL, ENGINE_NAMES, Settings

app = typer.Typer(help="dSC: distilled Self-Critique as a service.", no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Materialise models into the model store.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
student_app = typer.Typer(help="The student service (OpenAI-compatible API of the distilled model).", no_args_is_help=True)
app.add_typer(student_app, name="student")
teacher_app = typer.Typer(help="The teacher service (critique→revise sampling API, job queue, pairs).", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
trainer_app = typer.Typer(help="The trainer worker (distillation runs from the database).", no_args_is_help=True)
app.add_typer(trainer_app, name="trainer")

console = Console(stderr=True)


def load_settings(**overrides: Any) -> Settings:
    """Environment (DSC_*) first, then CLI flags that were actually given (None: not given), by
    field or, for a group, by group: load_settings(engine=..., teacher={"port": ...}). Sets up
    logging from them (WARNING unless DSC_LOG_LEVEL says otherwise; the services' own start-up
    raises that to INFO)."""
    from shared.logs import configure_logging

    def given(values: dict[str, Any]) -> dict[str, Any]:
        return {key: given(value) if isinstance(value, dict) else value for key, value in values.items() if value is not None}

    try:
        settings = Settings(**given(overrides))
    except ValidationError as error:
        fail(DscError(f"invalid configuration: {validation_message(error)}"))
    configure_logging(settings, default_level="WARNING")
    return settings


def validation_message(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        where = ".".join(map(str, item["loc"]))
        if where == "engine":
            messages.append(f"unknown engine {item.get('input')!r}; choose one of {', '.join(ENGINE_NAMES)}")
        else:
            messages.append(f"{where}: {item['msg']}")
    return "; ".join(messages)


def fail(error: DscError) -> NoReturn:
    console.print(f"[red]error:[/red] {error.message}", soft_wrap=True)
    raise typer.Exit(code=2)


@models_app.command("prepare")
def models_prepare(model: str = typer.Argument(BUNDLED_MODEL, help="Bundled name, local directory or hub id.")) -> None:
    """Materialise MODEL into the model store (idempotent) and print its directory."""
    from shared.model_store import resolve_model

    settings = load_settings()
    try:
        with console.status(f"preparing {model} …"):
            path = resolve_model(model, settings.resolved_model_store)
    except DscError as error:
        fail(error)
    typer.echo(str(path))


@db_app.command("upgrade")
def db_upgrade(database_url: Optional[str] = typer.Option(None, help="Overrides DSC_DATABASE_URL.")) -> None:
    """Apply all migrations to the database (idempotent)."""
    from shared.db.session import redacted_url, upgrade

    settings = load_settings(database_url=database_url)
    upgrade(settings.resolved_database_url)
    typer.echo(f"database at head: {redacted_url(settings.resolved_database_url)}")  # compose logs keep this line


@app.command("sample")
def sample(
    task: str = typer.Option(..., help="Task name (sentiment, safety, privacy or a custom task)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", min=1, help="Use the first N prompts of the task's set."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="A prompt of your own (repeatable)."),
    steps: Optional[int] = typer.Option(None, help="Critique→revise steps per chain (default: the task's)."),
    chains: int = typer.Option(1, help="Chains per prompt."),
    acceptance: Optional[str] = typer.Option(None, help="improve | mh | always (default: the task's)."),
    beta: Optional[float] = typer.Option(None, help="Tilt temperature for mh acceptance."),
    temperature: float = typer.Option(0.7),
    max_tokens: int = typer.Option(128),
    seed: Optional[int] = typer.Option(None),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | transformers | openai."),
    model: Optional[str] = typer.Option(None, help="Teacher model (default DSC_TEACHER_MODEL)."),
    student: Optional[str] = typer.Option(None, help="Sample from this registered student instead (a later round of distillation)."),
    store: bool = typer.Option(True, help="Store chains and pairs in the database."),
    as_json: bool = typer.Option(False, "--json", help="Print the chains as JSON on stdout."),
) -> None:
    """Run the critique→revise sampler locally, store the chains and show rewards before/after."""
    from shared.db.session import make_engine, session_factory, upgrade
    from shared.engines import create_engine
    from shared.sampling_protocol import ChainResult, SampleRequest, SampleResponse
    from shared.sampling_run import RewardPool, check_student_engine, plan_sample, run_plan, store_finished_run, student_model_dir

    settings = load_settings(engine=engine, teacher_model=model)
    try:
        request = SampleRequest(
            task=task, prompts=prompt or None, limit=prompts, steps=steps, chains=chains, acceptance=acceptance,
            beta=beta, temperature=temperature, max_tokens=max_tokens, seed=seed, store=store, student=student,
        )
    except ValidationError as error:
        fail(DscError(validation_message(error)))
    try:
        upgrade(settings.resolved_database_url)
        factory = session_factory(make_engine(settings.resolved_database_url))
        with factory() as session:
            plan = plan_sample(session, request)
            check_student_engine(plan, settings)
            sampler_model = settings.teacher_model if plan.student is None else str(
                student_model_dir(session, plan.student, settings.resolved_model_store))
        with console.status("loading reward model …"):
            rewards = RewardPool(network=settings.network_policy())
            rewards.get(plan.task.reward)  # fail on a missing reward before the slow engine start
        with console.status(f"starting engine ({settings.engine}) with {sampler_model} …"):
            llm = create_engine(settings, sampler_model)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
            phases = bar.add_task("sampling", total=1 + 2 * plan.steps)
            chains_out = run_plan(plan, llm, rewards, schedule=settings.teacher.sampler_schedule,
                                  progress=lambda phase, done, total: bar.update(phases, completed=done, total=total, description=phase))
        job_id = None
        if request.store:
            job_id, recorded = store_finished_run(factory, plan, chains_out, kind="cli")
            console.print(f"stored {recorded.chains} chains and {recorded.pairs} accepted pairs (job {job_id})")
    except DscError as error:
        fail(error)
    response = SampleResponse(job_id=job_id, results=[ChainResult.from_chain(chain) for chain in chains_out])
    if as_json:
        typer.echo(response.model_dump_json(indent=2))
    else:
        print_table(response)
    llm.close()


@app.command("up")
def up(
    engine: Optional[str] = typer.Option(None, help="auto | vllm | transformers (default DSC_ENGINE)."),
    host: str = typer.Option("127.0.0.1", help="Interface the services bind to."),
    teacher_port: Optional[int] = typer.Option(None, help="Default DSC_TEACHER_PORT (8000)."),
    student_port: Optional[int] = typer.Option(None, help="Default DSC_STUDENT_PORT (8001)."),
    timeout: float = typer.Option(900, help="Seconds to wait for every service to be ready."),
) -> None:
    """Start teacher, trainer worker and student locally; Ctrl-C stops them all."""
    from services.local import run_up

    settings = load_settings(engine=engine, teacher={"port": teacher_port}, student={"port": student_port})
    raise typer.Exit(code=run_up(settings, host=host, timeout=timeout))


@app.command("demo")
def demo(
    teacher_url: Optional[str] = typer.Option(None, help="Use running services instead of starting them (with --student-url)."),
    student_url: Optional[str] = typer.Option(None),
    client_key: Optional[str] = typer.Option(
        None, envvar="DSC_DEMO_CLIENT_KEY",
        help="Plain client key for the services: needed with --teacher-url or when DSC_API_KEYS is set (settings keep only digests)."),
    admin_token: Optional[str] = typer.Option(
        None, envvar="DSC_DEMO_ADMIN_TOKEN", help="Plain admin token, likewise (with --teacher-url or when DSC_ADMIN_TOKEN is set)."),
    train_prompts: int = typer.Option(DemoDefaults.train_prompts, help="Training prompts of the task the teacher samples."),
    eval_prompts: int = typer.Option(DemoDefaults.eval_prompts, help="Prompts of the task's evaluation set for the comparison."),
    samples: int = typer.Option(DemoDefaults.samples, help="Answers per evaluation prompt and system."),
    chains: int = typer.Option(DemoDefaults.chains, help="Chains per training prompt."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps of the distillation (default: the trainer's epochs)."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | transformers (default DSC_ENGINE)."),
    out_dir: Optional[Path] = typer.Option(None, help="Where the report image goes (default DATA_DIR/demo)."),
    force_promotion: bool = typer.Option(False, help="Promote the student even when its gate refuses it (the refusal is kept with it)."),
) -> None:
    """The main job end to end over HTTP: sample, distil, promote, compare base / teacher / student."""
    from services.demo import DemoConfig, DemoError, run_demo
    from services.local import LocalStack
    from services.process_memory import PeakMemory

    settings = load_settings(engine=engine)
    config = DemoConfig(train_prompts=train_prompts, eval_prompts=eval_prompts, samples=samples, chains=chains, max_steps=max_steps,
                        out_dir=out_dir or settings.data_dir / "demo", force_promotion=force_promotion)
    try:
        if teacher_url and student_url:
            run_demo(teacher_url, student_url, _needed(client_key, "--client-key"), _needed(admin_token, "--admin-token"), config)
            return
        if settings.api_keys:  # checked before anything starts
            _needed(client_key, "--client-key (DSC_API_KEYS is set)")
        if settings.admin_token:
            _needed(admin_token, "--admin-token (DSC_ADMIN_TOKEN is set)")
        with PeakMemory() as memory:
            with LocalStack(settings) as stack:
                client, admin = client_key or stack.tokens.client_key, admin_token or stack.tokens.admin_token
                stack.wait_ready(900)
                stack.print_summary()
                run_demo(stack.teacher_url, stack.student_url, client, admin, config)
        console.print(f"peak memory of the demo's processes (the three services and their engines; PSS, shared pages "
                      f"counted once): {memory.peak_gib:.1f} GiB ({memory.breakdown()})")
    except (DemoError, RuntimeError) as error:
        fail(DscError(str(error)))


@app.command("distil")
def distil(
    task: str = typer.Option(..., help="Task whose training prompts every round samples."),
    rounds: int = typer.Option(1, min=1, help="Rounds of sample → distil → evaluate → promote; each later round samples from the last student."),
    teacher_url: str = typer.Option("http://127.0.0.1:8000", help="The running teacher (dsc up, compose)."),
    admin_token: Optional[str] = typer.Option(None, envvar="DSC_DEMO_ADMIN_TOKEN", help="Plain admin token of the teacher."),
    prompts: Optional[int] = typer.Option(None, min=1, help="Use the first N training prompts of the task (default: all)."),
    chains: int = typer.Option(2, min=1, help="Chains per prompt in each round's job."),
    max_tokens: int = typer.Option(96, min=1, help="Tokens per answer in each round's job."),
    max_steps: Optional[int] = typer.Option(None, help="Training steps of each distillation (default: the trainer's epochs)."),
    student: Optional[str] = typer.Option(None, help="A registered student round 1 samples from (default: the teacher's model)."),
    seed: int = typer.Option(0),
    force_promotion: bool = typer.Option(False, help="Promote a round's student even when its gate refuses it (otherwise the rounds end there)."),
) -> None:
    """Distil in rounds through the running teacher: each round samples a job (from the previous round's
    student after the first), distils it, and promotes the student its gate allows."""
    from services.demo import DemoError
    from services.rounds import RoundsConfig, run_rounds

    config = RoundsConfig(task=task, rounds=rounds, prompts=prompts, chains=chains, max_tokens=max_tokens, seed=seed,
                          student=student, distillation={"max_steps": max_steps} if max_steps else {}, force_promotion=force_promotion)
    try:
        summaries = run_rounds(teacher_url, _needed(admin_token, "--admin-token"), config)
    except DemoError as error:
        fail(DscError(str(error)))
    for summary in summaries:
        console.print(f"round {summary['round']}: {summary['model']} ({summary['student_id']}), parent "
                      f"{summary['parent_id'] or 'the teacher'}, job {summary['job_id']}, "
                      f"{'promoted' if summary['promoted'] else 'not promoted'}")


def _needed(token: Optional[str], option: str) -> str:
    if not token:
        fail(DscError(f"a plain token is needed to call the services: pass {option}"))
    return token


@app.command("eval")
def evaluate(
    task: str = typer.Option("sentiment", help="Task whose evaluation set and reward are used."),
    student: Optional[str] = typer.Option(None, help="Registered student id (default: the task's active student)."),
    adapter: Optional[Path] = typer.Option(None, help="Evaluate this LoRA adapter directory instead of a registered student."),
    merged: Optional[Path] = typer.Option(None, help="Evaluate this merged model directory instead of a registered student."),
    base_model: Optional[str] = typer.Option(None, help="Base model of --adapter/--merged (default DSC_STUDENT_BASE_MODEL)."),
    samples: int = typer.Option(4, min=1, max=32, help="Answers per prompt and system (K)."),
    prompts: int = typer.Option(48, min=1, help="Evaluate on the first N prompts of the evaluation set."),
    max_tokens: int = typer.Option(96, min=1, max=1024),
    teacher: bool = typer.Option(False, "--teacher", help="Also run the teacher's critique→revise chain (slow)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Student vs base (vs the task's active student, vs teacher) on the task's evaluation set, on the
    reward and the second opinion: K samples per prompt, 95% intervals."""
    import json

    from services.trainer.evaluation_figures import figures_table
    from services.trainer.evaluation_engines import incumbent_weights, run_evaluation
    from shared.distillation.config import EvaluationConfig
    from shared.model_store import resolve_model
    from shared.tasks import get_task

    settings = load_settings()
    config = EvaluationConfig(task=task, samples=samples, max_eval_prompts=prompts, max_tokens=max_tokens, teacher=teacher)
    try:
        with _db_session(settings) as session:
            spec = get_task(session, task)
            if adapter or merged:
                evaluated, base_name, adapter_dir, merged_dir = None, base_model or settings.student_base_model, adapter, merged
            else:
                evaluated, base_name, adapter_dir, merged_dir = _registered_student(session, task, student)
            incumbent = incumbent_weights(session, task, settings.resolved_model_store, excluding=evaluated)
        base_path = resolve_model(base_name, settings.resolved_model_store)
        with console.status("evaluating …") as status:
            figures = run_evaluation(settings, config, spec, base_path=base_path, adapter_dir=adapter_dir, merged_dir=merged_dir,
                                     incumbent=incumbent, on_phase=lambda phase: status.update(phase))
    except DscError as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(figures, ensure_ascii=False))
        return
    Console().print(figures_table(figures, title=f"task {task}"))
    Console().print(figures["gate"]["reason"])


def _db_session(settings: Settings):
    from shared.db.session import make_engine, session_factory, upgrade

    upgrade(settings.resolved_database_url)
    return session_factory(make_engine(settings.resolved_database_url))()


def _registered_student(session, task: str, student_id: str | None) -> tuple[str, str, Path | None, Path | None]:
    from sqlalchemy import select

    from shared.db.models import Student

    query = select(Student).where(Student.id == student_id) if student_id else select(Student).where(
        Student.task_name == task, Student.active.is_(True))
    row = session.scalar(query)
    if row is None:
        raise DscError(f"no student {student_id!r}" if student_id else f"task {task!r} has no active student: pass --student or --adapter")
    return row.id, row.base_model, Path(row.adapter_path) if row.adapter_path else None, Path(row.merged_path) if row.merged_path else None


@student_app.command("serve")
def student_serve(
    model: Optional[str] = typer.Option(None, help="Serve this model standalone (bundled name or directory; no database)."),
    host: Optional[str] = typer.Option(None, help="Interface to bind (default DSC_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Default DSC_STUDENT_PORT (8001)."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | transformers (default DSC_ENGINE)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind with no API keys configured."),
) -> None:
    """Serve the active student (or --model) through an OpenAI-compatible API."""
    from services.student.app import serve
    from shared.web.auth import open_bind_refusal

    settings = load_settings(engine=engine, host=host, student={"port": port})
    if refusal := open_bind_refusal(settings, insecure=insecure):
        fail(DscError(refusal))
    serve(settings, host=settings.host, port=settings.student.port, model=model)


@teacher_app.command("serve")
def teacher_serve(
    host: Optional[str] = typer.Option(None, help="Interface to bind (default DSC_HOST, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Default DSC_TEACHER_PORT (8000)."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | transformers | openai (default DSC_ENGINE)."),
    model: Optional[str] = typer.Option(None, help="Teacher model (default DSC_TEACHER_MODEL)."),
    workers: Optional[int] = typer.Option(None, min=0, help="Job worker threads (default DSC_JOB_WORKERS; 0: serve only)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind with no API keys configured."),
) -> None:
    """Serve the teacher API and run job workers; loads the engine and reward models once."""
    from services.teacher.app import serve
    from shared.web.auth import open_bind_refusal

    settings = load_settings(engine=engine, host=host, teacher={"port": port}, teacher_model=model, jobs={"workers": workers})
    if refusal := open_bind_refusal(settings, insecure=insecure):
        fail(DscError(refusal))
    serve(settings, host=settings.host, port=settings.teacher.port)


@trainer_app.command("work")
def trainer_work(
    database_url: Optional[str] = typer.Option(None, help="Overrides DSC_DATABASE_URL."),
    once: bool = typer.Option(False, "--once", help="Exit when no queued run is left instead of polling."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads (default DSC_TRAINER_THREADS or all cores)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default DSC_TRAINER_DEVICE, auto)."),
    processes: Optional[int] = typer.Option(None, help="Data-parallel training processes per run (default DSC_TRAINER_PROCESSES, 1)."),
) -> None:
    """Claim queued distillation runs and train, evaluate and register their students."""
    from services.trainer.worker import work

    settings = load_settings(database_url=database_url, trainer={"threads": threads, "device": device, "processes": processes})
    try:
        work(settings, once=once)
    except DscError as error:
        fail(error)


def print_table(response) -> None:
    table = Table(title="critique → revise: reward before and after")
    for column in ("#", "prompt", "before", "after", "accepted"):
        table.add_column(column, overflow="fold")
    for result in response.results:
        table.add_row(
            f"{result.prompt_index}.{result.chain_index}",
            result.prompt[:60],
            f"{result.initial.reward:.3f}",
            f"{result.final.reward:.3f}",
            "yes" if result.accepted else "no",
        )
    Console().print(table)
    if response.results:
        before = sum(r.initial.reward for r in response.results) / len(response.results)
        after = sum(r.final.reward for r in response.results) / len(response.results)
        accepted = sum(r.accepted for r in response.results)
        Console().print(f"mean reward {before:.3f} → {after:.3f}; {accepted}/{len(response.results)} chains accepted")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    sys.exit(main())
