"""Running an evaluation: the engines of base, student and incumbent (and teacher where asked), the
figures of evaluation_figures.py, then every engine released. The trainer worker runs queued evaluations and each
distillation's own evaluation with it; `dsc eval` runs one directly. The queue side (submit, show,
cancel) is shared/distillation/evaluation_queue.py.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from sqlalchemy.orm import Session

from shared.distillation.config import EvaluationConfig
from shared.device import release_freed_memory
from shared.errors import InvalidRequest
from shared.distillation.registry import StudentWeights, incumbent_of, weights_of
from shared.model_store import merge_adapter
from shared.settings import Settings
from shared.tasks import TaskSpec

log = logging.getLogger(__name__)


class StartedOnUse:
    """An engine that starts on its first call and can be closed before then: an evaluation's
    vLLM engines run one after the other, never side by side (each holds ~1.7 GiB on vLLM-CPU)."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start, self._engine = start, None

    def generate(self, conversations, params):
        if self._engine is None:
            self._engine = self._start()
        return self._engine.generate(conversations, params)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def incumbent_weights(session: Session, task_name: str, store: Path, *, excluding: str | None = None) -> StudentWeights | None:
    """The task's active student now (not `excluding`): the incumbent an evaluated student must not be worse than."""
    active = incumbent_of(session, task_name, excluding=excluding)
    return None if active is None else weights_of(active, store)


def evaluation_engines(settings: Settings, base_path: Path, adapter_dir: Path | None, merged_dir: Path | None,
                       scratch: Path, incumbent: StudentWeights | None = None) -> list:
    """[base, student] engines for an evaluation, plus the incumbent's where there is one. vLLM
    where settings allow it (on the device it picks: its GPU build on CUDA), else transformers on
    trainer.device; all in the serving dtype. On vLLM a student runs from merged weights (the
    challenger's written to `scratch`, the incumbent's to the model store, where the student
    service keeps them too), each in an engine started on its first use: vLLM-CPU's LoRA path was
    several times slower than the base model here (docs/architecture.md §10). Close every engine
    of the list when done."""
    from shared.engines.vllm_options import vllm_available

    if settings.engine in ("auto", "vllm") and vllm_available():
        from shared.engines.vllm_engine import VLLMEngine
        from shared.engines.vllm_options import engine_settings

        def start(path: Path) -> VLLMEngine:
            # Eager: a one-off engine for a few hundred answers starts in ~20 s instead of ~60-90 s compiled.
            return VLLMEngine(path, **engine_settings(settings, gpu_memory_utilization=settings.trainer.eval_memory_utilization,
                                                      enforce_eager=True))

        try:
            base = start(base_path)
        except Exception as error:
            if settings.engine == "vllm":
                raise
            log.warning("vLLM could not start for the evaluation (%s); using transformers", error)
        else:
            student_path = lambda: merged_dir or merge_adapter(base_path, adapter_dir, scratch / "merged", device=settings.trainer.device)  # noqa: E731
            engines = [base, StartedOnUse(lambda: start(student_path()))]
            if incumbent is not None:
                engines.append(StartedOnUse(lambda: start(incumbent.merged(settings.resolved_model_store))))
            return engines
    from shared.engines.transformers_engine import TransformersEngine

    def transformers(weights_base: Path, adapter: Path | None, merged: Path | None) -> TransformersEngine:
        device = settings.trainer.device
        if adapter is not None:
            return TransformersEngine(weights_base, dtype=settings.dtype, adapter_path=adapter, device=device)
        if merged is None:
            raise InvalidRequest("the student has neither an adapter nor merged weights")
        return TransformersEngine(merged, dtype=settings.dtype, device=device)

    engines = [transformers(base_path, None, base_path), transformers(base_path, adapter_dir, merged_dir)]
    if incumbent is not None:
        engines.append(StartedOnUse(lambda: transformers(incumbent.base_path, incumbent.adapter_dir, incumbent.merged_dir)))
    return engines


def run_evaluation(settings: Settings, config: EvaluationConfig, task: TaskSpec, *, base_path: Path,
                   adapter_dir: Path | None = None, merged_dir: Path | None = None, incumbent: StudentWeights | None = None,
                   prompts: list[str] | None = None, on_phase=None) -> dict[str, Any]:
    """Load base and student (and the incumbent and the teacher where asked), evaluate, release them."""
    from services.trainer.evaluation_figures import Incumbent, evaluate_student, general_prompts
    from shared.engines.transformers_engine import TransformersEngine
    from shared.rewards import build_reward

    scratch = Path(tempfile.mkdtemp(prefix="dsc-eval-"))
    engines = evaluation_engines(settings, base_path, adapter_dir, merged_dir, scratch, incumbent)
    base, student = engines[:2]
    judge = None
    if "llm-judge" in (task.reward.get("type"), (task.second_opinion or {}).get("type")) or config.teacher:
        from shared.engines import create_engine

        # The teacher where the services have it: a remote one (DSC_ENGINE=openai) is asked over HTTP,
        # never loaded here; a local one on transformers, beside the evaluation's own engines.
        judge = create_engine(settings, settings.teacher_model, engine="openai" if settings.engine == "openai" else "transformers",
                              device=settings.trainer.device)
        engines.append(judge)
    scorer = None
    if config.collapse_check:  # perplexity needs the model's logits: transformers, whatever generates
        scorer = base if isinstance(base, TransformersEngine) else TransformersEngine(base_path, dtype=settings.dtype,
                                                                                     device=settings.trainer.device)
        engines.append(scorer)
    network = settings.network_policy()
    try:
        return evaluate_student(
            task=task, reward=build_reward(task.reward, judge_engine=judge, network=network), base=base, student=student,
            second=build_reward(task.second_opinion, judge_engine=judge, network=network) if task.second_opinion else None,
            incumbent=Incumbent(incumbent.id, incumbent.model, engines[2]) if incumbent is not None else None,
            done_with=lambda engine: engine is not scorer and engine.close(),  # free each engine before the next one starts
            prompts=prompts or config.prompts_for(task.name, task.eval_prompts), samples=config.samples, params=config.params,
            teacher=judge if config.teacher else None, scorer=scorer, general=general_prompts() if config.collapse_check else (),
            examples=config.examples, on_phase=on_phase,
        )
    finally:
        for engine in reversed({id(e): e for e in engines}.values()):
            engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
        release_freed_memory(settings.trainer.device)  # the scorer's and the merge's weights
