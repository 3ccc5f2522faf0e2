"""The training loop: supervised fine-tuning of the student on accepted pairs (docs/architecture.md
§1.3, §8) and, for a preference objective, DPO on the chains' preference pairs (dpo.py), with checkpoints.

Minimising the cross-entropy of the teacher's accepted answers y given prompts c,

    L(θ) = − Σ_(c, y) Σ_t log q_θ(y_t | c, y_<t)        (answer tokens only; the prompt is masked)

is minimising KL(posterior ‖ student) over the pairs the sampler drew from the tilted posterior
p(x | c, r) ∝ p(x | c) · exp(r(x)/β): the student amortises the critique→revise chain.

A plain transformers + peft loop (TRL's SFT trainer would do the same, with more machinery
around it): LoRA on the attention projections by default, AdamW, linear warmup then decay. Every
`save_steps` steps a checkpoint (trainable weights, optimizer, scheduler, RNG, loss history) is
written atomically under `checkpoints/step-NNNNNN`; a run that starts and finds one resumes from
the newest, and because the batch order is a pure function of (seed, step), the resumed run sees
exactly the batches the killed one would have. With `objective: sft_dpo` the preference phase
follows the supervised one in the same loop (step numbers, schedule and checkpoints run on), so a
run killed in either phase resumes the same way.

Device and dtype (shared.device): CUDA when torch sees a GPU, else the CPU (or as forced);
`dtype: auto` trains the base weights in bfloat16 on a GPU that computes it and in float32
elsewhere: on the CPUs here a LoRA backward pass in bfloat16 (pure or autocast) was 15-20x slower
than in float32 (torch 2.13 CPU). With `processes > 1` the run trains data-parallel (parallel.py);
the loop below is the same on every rank.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from services.trainer.artifact_writes import staged
from services.trainer.data import IGNORE_INDEX, Tokenized, batch_indices, collate, tokenize_all
from services.trainer.dpo import PassCallback, PassStopped, dpo_loss, pair_logps, preference_figures, reference_logps, tokenize_preferences
from services.trainer.ranks import Ranks, params_digest
from shared.distillation.config import DistillationConfig
from shared.distillation.pairs import Example
from shared.distillation.preferences import Preference
from shared.device import training_dtype
from shared.errors import InvalidRequest

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on request (cancel, shutdown, lost lease); `reason` says which."""

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(f"training interrupted at step {step}: {reason}")
        self.reason, self.step = reason, step


# step, total, loss → None to go on, or a reason to stop (a checkpoint is written first).
StepCallback = Callable[[int, int, float], "str | None"]


@dataclass
class TrainResult:
    steps: int
    losses: list[list[float]]  # [step, loss] for every step
    train_examples: int
    skipped_examples: int
    resumed_from: int | None
    seconds: float
    device: str  # the device type it trained on: cpu or cuda
    dtype: str  # the base weights' dtype while training
    processes: int  # data-parallel ranks
    seen: list[int]  # how often this rank trained on each example (this attempt)
    params_sha256: str  # this rank's trainable weights at the end (ranks in sync agree)
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    data_parallel: dict | None = None  # what each rank did (parallel.summary); None for one process
    preference: dict | None = None  # the preference phase: steps, β, and how the student ranks its pairs (dpo.preference_figures)


def load_tokenizer(base_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(config: DistillationConfig, base_path: Path, dtype: str = "float32"):
    """The base model with LoRA attached (or all weights trainable for method=full), in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    if config.method == "full":
        model = model.float() if dtype == "float32" else model
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype (peft's default) keeps the LoRA weights in float32 over a bf16 base.
    return get_peft_model(model, lora)


# --- checkpoints ----------------------------------------------------------------------------------


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    done = sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and (p / "state.pt").is_file())
    return done[-1] if done else None


def _rng_state(ranks: Ranks) -> dict:
    import torch

    state = {"cpu": torch.get_rng_state()}
    if ranks.device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ranks.device)
    return state


def _save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, losses: list, ranks: Ranks, keep: int) -> Path | None:
    """Every rank calls this (their random states are gathered); rank 0 writes, and keeps the
    newest `keep` checkpoints."""
    import torch

    rng_ranks = ranks.gather(_rng_state(ranks))
    if not ranks.main:
        return None
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:06d}"
    if target.exists():
        return target
    tmp = folder / f"step-{step:06d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    trainable = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    with staged(tmp, f"the checkpoint of step {step}"):
        torch.save(
            {"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng_ranks[0]["cpu"], "rng_ranks": rng_ranks, "losses": losses},
            tmp / "state.pt",
        )
    try:
        os.replace(tmp, target)  # atomic: a checkpoint directory is whole or absent
    except OSError:  # another attempt wrote the same step meanwhile: identical content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _load_checkpoint(path: Path, model, optimizer, scheduler, ranks: Ranks = Ranks()) -> tuple[int, list]:
    import torch

    state = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    missing = set(state["trainable"]) - {name for name, _ in model.named_parameters()}
    if missing:
        raise InvalidRequest(f"checkpoint {path} does not fit this model ({len(missing)} unknown weights)")
    model.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # Each rank's own random state where the checkpoint has one per rank (written by as many ranks), else rank 0's.
    per_rank = state.get("rng_ranks") or []
    mine = per_rank[ranks.rank] if len(per_rank) == ranks.world else {"cpu": state["rng"]}
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and ranks.device_type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], ranks.device)
    return int(state["step"]), list(state["losses"])


# --- the loop -------------------------------------------------------------------------------------


def adamw(params: list, config: DistillationConfig):
    """AdamW, fused where torch has the kernel for these weights (CPU and CUDA, float32/bfloat16): one
    kernel over every weight instead of torch's CPU default, a loop per weight, which took 1.4-1.7 s
    of each step of a full fine-tune of SmolLM2-135M here against 0.25-0.35 s fused (1 thread;
    bench/distill_speed.py). TRL's trainer uses the fused one too. Same update either way."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def answer_tokens(items: Sequence[Tokenized]) -> int:
    """Label tokens the loss counts (the model shifts labels by one: the first never counts)."""
    return sum(sum(1 for label in item.labels[1:] if label != IGNORE_INDEX) for item in items)


def run_training(
    config: DistillationConfig,
    base_path: Path,
    examples: Sequence[Example],
    run_dir: Path,
    *,
    on_step: StepCallback | None,
    ranks: Ranks,
    keep_checkpoints: int,
    preferences: Sequence[Preference] = (),
    on_pass: PassCallback | None = None,
) -> TrainResult:
    """The training loop of one rank (of `ranks.world`; world 1: the whole run in this process):
    the supervised phase on `examples`, then the preference phase on `preferences`, as the run's
    objective has them. Only rank 0 calls `on_step` and `on_pass` (the preference phase's passes
    over every pair, between steps) and writes checkpoints and artifacts; either callback's answer
    (a reason to stop) stops every rank with Interrupted."""
    import torch
    from transformers import get_scheduler

    started = time.monotonic()
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(base_path)
    items, skipped = tokenize_all(tokenizer, examples, config.max_seq_len) if config.fine_tunes else ([], 0)
    if config.fine_tunes and not items:
        raise InvalidRequest(f"no training pair fits max_seq_len={config.max_seq_len} tokens with its prompt")
    pairs, skipped_pairs = tokenize_preferences(tokenizer, preferences, config.max_seq_len) if config.prefers else ([], 0)
    if config.prefers and not pairs:
        raise InvalidRequest(f"no preference pair fits max_seq_len={config.max_seq_len} tokens with its prompt")
    sft_steps, dpo_steps = config.phase_steps(len(items), len(pairs))
    total = sft_steps + dpo_steps

    dtype = training_dtype(config.dtype, ranks.device_type)
    model = build_model(config, base_path, dtype).to(ranks.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, config)
    # One schedule over the whole run; with sft_dpo the preference phase starts where the supervised one ended.
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(config.warmup_ratio * total), num_training_steps=total)

    step, losses, resumed_from = 0, [], None
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        step, losses = _load_checkpoint(checkpoint, model, optimizer, scheduler, ranks)
        resumed_from = step
        if ranks.main:
            log.info("resuming from %s (step %d of %d)", checkpoint, step, total)

    trained = ranks.wrap(model)
    trained.train()
    seen = [0] * (len(items) + len(pairs))  # how often this rank trained on each example, then each preference pair (this attempt)
    reference = None
    while step < total:
        supervised = step < sft_steps
        size = len(items) if supervised else len(pairs)
        everyone = batch_indices(size, config.batch_size, step if supervised else step - sft_steps, config.seed)
        mine = ranks.shard(everyone)
        # A rank left without pairs (a batch smaller than the ranks) still joins the gradient average, with weight 0.
        weight = 1.0 if mine else 0.0
        chosen = mine or everyone[:1]
        if supervised:
            batch = collate([items[i] for i in chosen], tokenizer.pad_token_id)
            batch = {name: tensor.to(ranks.device) for name, tensor in batch.items()}
            # Summed over this rank's answer tokens, divided by the whole batch's: the ranks' shares add up to the batch mean.
            loss = trained(**batch, num_items_in_batch=answer_tokens([items[i] for i in everyone])).loss * weight
        else:
            if reference is None:
                try:
                    reference = reference_logps(model, pairs, tokenizer.pad_token_id, ranks.device, run_dir, write=ranks.main,
                                                on_pass=_answered_by_main(on_pass, ranks))
                except PassStopped as stopped:  # a resumed run repeats the steps since the last checkpoint, as after a kill
                    raise Interrupted(stopped.reason, step) from None
            policy = pair_logps(trained, [pairs[i] for i in chosen], tokenizer.pad_token_id, ranks.device)
            # Summed over this rank's pairs, divided by the whole batch's count: the ranks' shares add up to the batch mean.
            loss = dpo_loss(policy, reference[chosen], config.dpo_beta).sum() / len(everyone) * weight
        (loss * ranks.world).backward()  # DDP averages over the ranks: x world makes it the sum
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        for index in mine:
            seen[index if supervised else len(items) + index] += 1
        value = ranks.total(float(loss.detach()))
        if not math.isfinite(value):
            raise InvalidRequest(f"training diverged at step {step} (loss {value}); lower learning_rate")
        losses.append([step, round(value, 5)])
        stop = on_step(step, total, value) if on_step and ranks.main else None
        stop = ranks.from_main(stop)
        if stop or step % config.save_steps == 0 or step == total:
            _save_checkpoint(run_dir, step, model, optimizer, scheduler, losses, ranks, keep_checkpoints)
        if stop and step < total:
            raise Interrupted(stop, step)

    model.eval()
    result = TrainResult(step, losses, len(items), skipped, resumed_from, time.monotonic() - started, device=ranks.device_type,
                         dtype=dtype, processes=ranks.world, seen=seen, params_sha256=params_digest(model))
    if pairs and ranks.main:  # rank 0 alone, the others done: no collective here
        try:
            if reference is None:  # resumed after the last step: the file holds it
                reference = reference_logps(model, pairs, tokenizer.pad_token_id, ranks.device, run_dir, write=True, on_pass=on_pass)
            figures = preference_figures(model, pairs, reference, tokenizer.pad_token_id, ranks.device, config.dpo_beta, on_pass=on_pass)
        except PassStopped as stopped:  # the last checkpoint holds every step: a resumed run only makes this pass
            raise Interrupted(stopped.reason, step) from None
        result.preference = {"steps": dpo_steps, "beta": config.dpo_beta, "skipped_too_long": skipped_pairs, **figures}
    if ranks.main:
        result.adapter_dir, result.merged_dir = save_artifacts(config, model, tokenizer, run_dir)
    return result


def _answered_by_main(on_pass: PassCallback | None, ranks: Ranks) -> PassCallback:
    """The reference pass's callback on every rank: rank 0 asks `on_pass`, and its answer reaches
    every rank after every batch, so all of them stop at the same batch (each computes every pair,
    in step with the others) instead of waiting in the next step for a rank that left."""

    def answered(name: str, done: int, total: int) -> str | None:
        return ranks.from_main(on_pass(name, done, total) if on_pass is not None and ranks.main else None)

    return answered


def save_artifacts(config: DistillationConfig, model, tokenizer, run_dir: Path) -> tuple[Path | None, Path | None]:
    """adapter/ (peft: loadable with PeftModel.from_pretrained) and, with merge or a full
    fine-tune, merged/ (a plain HF model directory), in a directory of this attempt's own under
    outputs/: a worker whose lease ran out and its successor never write into the same place, so
    the directory the registry names is never replaced under a student that serves from it (the
    fenced commit decides which attempt's directory is registered). Each is written beside and
    renamed into place, so it is whole or absent."""
    out = run_dir / "outputs" / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True)
    adapter_dir = merged_dir = None
    if config.method == "lora":
        adapter_dir = _write_dir(out / "adapter", lambda path: (model.save_pretrained(path), tokenizer.save_pretrained(path)))
    if config.method == "full" or config.merge:
        def _merged(path: Path) -> None:
            merged = model.merge_and_unload() if config.method == "lora" else model
            merged.save_pretrained(path)
            tokenizer.save_pretrained(path)

        merged_dir = _write_dir(out / "merged", _merged)
    return adapter_dir, merged_dir


def _write_dir(target: Path, write) -> Path:
    tmp = target.with_name(f"{target.name}.tmp")
    with staged(tmp, f"the {target.name} directory"):
        write(tmp)
    os.replace(tmp, target)
    return target


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
