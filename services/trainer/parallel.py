"""Data-parallel training: N processes (ranks) train one run together with torch DDP.

    launcher   torch.distributed's elastic launcher (what `torchrun` runs) starts N ranks on this
               machine, rendezvous on a free local port, and ends them all if one fails
    backend    NCCL on CUDA (one GPU per rank), gloo on the CPU (one thread per core share)
    data       every step's global batch is the one a single process would train on
               (data.batch_indices: a pure function of seed and step); rank r takes every N-th
               pair of it, so the ranks' shards are disjoint and together make the batch
    gradients  DDP averages them; each rank's loss is its answer tokens' summed cross-entropy
               over the global batch's answer-token count, times N, so the average is exactly the
               one-process gradient of the mean loss over the whole batch
    writes     rank 0 alone: checkpoints, the adapter, and progress (each step, and how far a
               preference pass over every pair is), which it hands to the calling process over a
               pipe; that process (the trainer worker, holding the run's lease) writes it to the
               database and answers a step with go on or stop, which rank 0 broadcasts

So `batch_size` is pairs per optimizer step however many processes train, and a run trains the
same way on 1 or N processes (the same steps, learning-rate schedule and, without dropout, the same
weights up to float rounding): a checkpoint written by N ranks resumes on M.

Why not `accelerate`: the loop's batch order is its own (for exact resume), so its dataloader
sharding would be unused; its scheduler wrapper steps the schedule N times per step; and its
process-wide state singleton does not fit a worker that trains many runs in one process. DDP is
what it would wrap anyway.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from services.trainer.distill import Interrupted, StepCallback, TrainResult, run_training
from services.trainer.dpo import PassCallback
from services.trainer.ranks import Ranks
from shared.errors import DscError, InvalidRequest
from shared.parent_death import end_with_parent

if TYPE_CHECKING:
    from shared.distillation.config import DistillationConfig
    from shared.distillation.pairs import Example
    from shared.distillation.preferences import Preference

log = logging.getLogger(__name__)

# A peer that stopped answering (a hung rank) fails the collective after this long.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class TrainingFailed(DscError):
    """A training rank died or raised something unexpected."""


# --- the ranks ------------------------------------------------------------------------------------


@dataclass
class RankOutcome:
    rank: int
    result: "TrainResult | None" = None
    interrupted: tuple[str, int] | None = None
    error: tuple[str, str] | None = None  # (InvalidRequest | DscError, message): the run's own failure


def _rank_main(conn, config_data: dict, base_path: str, examples: list, preferences: list, run_dir: str, device: str, threads: int,
               keep_checkpoints: int, parent_pid: int) -> RankOutcome:
    """One training rank (started by the elastic launcher, which sets RANK, WORLD_SIZE, LOCAL_RANK
    and the rendezvous address). Rank 0 relays progress through `conn`."""
    # A trainer killed outright cannot stop its ranks: the kernel does, at once, rather than each
    # rank finishing its step (or hanging in a collective) with nobody to report to.
    end_with_parent(signal.SIGKILL, parent_pid=parent_pid)
    import torch
    import torch.distributed as dist

    from shared.distillation.config import DistillationConfig

    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local)
        ranks = Ranks(rank, world, f"cuda:{local}", "nccl")
    else:
        torch.set_num_threads(threads)  # N ranks × all cores each would spin-wait for each other
        ranks = Ranks(rank, world, "cpu", "gloo")
    dist.init_process_group(ranks.backend, timeout=COLLECTIVE_TIMEOUT)
    conn = conn if rank == 0 else None

    def relay(*message) -> str | None:
        conn.send(message)
        return conn.recv()  # EOFError when the calling process died: this rank ends, and the others with it

    try:
        result = run_training(DistillationConfig.model_validate(config_data), Path(base_path), examples, Path(run_dir),
                              on_step=(lambda *step: relay("step", *step)) if rank == 0 else None, ranks=ranks,
                              keep_checkpoints=keep_checkpoints, preferences=preferences,
                              on_pass=(lambda *done: relay("pass", *done)) if rank == 0 else None)
        return RankOutcome(rank, result=result)
    except Interrupted as stop:
        return RankOutcome(rank, interrupted=(stop.reason, stop.step))
    except DscError as error:
        return RankOutcome(rank, error=(type(error).__name__, error.message))
    finally:
        dist.destroy_process_group()


# --- the launcher ---------------------------------------------------------------------------------


class _QuietChildThread(logging.Filter):
    # The launcher runs in a thread of ours, where it cannot install its signal handlers, and warns
    # about orphans; rank 0 ends when our end of its pipe closes, the others with it.
    def filter(self, record: logging.LogRecord) -> bool:
        return "running on a child thread" not in record.getMessage()


logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_QuietChildThread())


def cpu_threads_per_rank(processes: int, threads: int | None) -> int:
    if threads:
        return threads
    return max(1, len(os.sched_getaffinity(0)) // processes)


def launch(
    config: "DistillationConfig",
    base_path: Path,
    examples: Sequence["Example"],
    run_dir: Path,
    *,
    on_step: "StepCallback | None",
    processes: int,
    device: str,
    threads: int | None = None,
    keep_checkpoints: int,
    preferences: Sequence["Preference"] = (),
    on_pass: "PassCallback | None" = None,
) -> "TrainResult":
    """Train with `processes` ranks on this machine; rank 0's result, with what each rank did
    under `data_parallel`. Raises what a single process would (Interrupted, InvalidRequest)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch


    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    logs = tempfile.mkdtemp(prefix="dsc-ranks-")
    launch_config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex, rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0", max_restarts=0, start_method="spawn", monitor_interval=0.2,
        logs_specs=DefaultLogsSpecs(log_dir=logs),
    )
    args = (theirs, config.model_dump(mode="json"), str(base_path), list(examples), list(preferences), str(run_dir), device,
            cpu_threads_per_rank(processes, threads), keep_checkpoints, os.getpid())
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["values"] = elastic_launch(launch_config, _rank_main)(*args)
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    launcher = threading.Thread(target=run, name="trainer-ranks", daemon=True)
    launcher.start()
    relay_error: BaseException | None = None
    try:
        while launcher.is_alive():
            if not ours.poll(0.2):
                continue
            try:
                kind, *message = ours.recv()
            except EOFError:  # rank 0 ended; the launcher reports how
                launcher.join()
                break
            answer = "lease lost" if relay_error else None
            callback = on_step if kind == "step" else on_pass
            if relay_error is None and callback is not None:
                try:
                    answer = callback(*message)
                except BaseException as error:  # e.g. LeaseLost: stop the ranks, then raise it here
                    relay_error, answer = error, "lease lost"
            ours.send(answer)
        launcher.join()
    finally:
        ours.close()
        theirs.close()
        shutil.rmtree(logs, ignore_errors=True)
    if relay_error is not None:
        raise relay_error
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ChildFailedError):
            rank, failure = error.get_first_failure()
            raise TrainingFailed(f"training process {rank} of {processes} failed (exit code {failure.exitcode}): "
                                 f"{_last_line(failure.message)}") from error
        raise error
    ranked = [outcome["values"][rank] for rank in range(processes)]
    main = ranked[0]
    if main.interrupted is not None:
        raise Interrupted(*main.interrupted)
    if main.error is not None:
        kind, message = main.error
        raise (InvalidRequest if kind == "InvalidRequest" else DscError)(message)
    result = main.result
    result.data_parallel = summary(ranked, device)
    return result


def summary(ranked: list[RankOutcome], device: str) -> dict:
    """What each rank did: the pairs it trained on (counts per example) and whether all ended with
    the same weights."""
    mine = [outcome.result for outcome in ranked]
    return {
        "processes": len(ranked), "backend": "nccl" if device == "cuda" else "gloo",
        "examples_per_rank": [sum(result.seen) for result in mine],
        "seen_per_rank": [result.seen for result in mine],
        "in_sync": len({result.params_sha256 for result in mine}) == 1,
    }


def _last_line(message: Any) -> str:
    text = message.get("message", str(message)) if isinstance(message, dict) else str(message)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message (see the trainer log)"
