"""Validation of a LoRA adapter before any engine sees it (docs/architecture.md §7.3: an invalid adapter once
crashed vLLM's whole server). The student checks every adapter it is about to load."""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import InvalidRequest


def validate_adapter(adapter_dir: Path, base_dir: Path, *, max_rank: int) -> dict:
    """Check a LoRA adapter against the base model before any engine sees it: config, rank,
    files, and every lora_A/lora_B shape against the base weight it adapts. Returns its config."""
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise InvalidRequest(f"{adapter_dir} is not a peft adapter (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise InvalidRequest(f"{config_file} is not valid JSON: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise InvalidRequest(f"adapter {adapter_dir} is {config.get('peft_type')!r}, only LoRA adapters are served")
    ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
    if max(ranks) > max_rank or min(ranks) < 1:
        raise InvalidRequest(f"adapter {adapter_dir} has rank {max(ranks)}; this service accepts 1..{max_rank}")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise InvalidRequest(f"adapter {adapter_dir} has no adapter_model.safetensors")

    from safetensors import safe_open

    base_shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                base_shapes[key] = tuple(handle.get_slice(key).get_shape())
    with safe_open(str(weights), framework="pt") as handle:
        keys = list(handle.keys())
        if not keys:
            raise InvalidRequest(f"adapter {adapter_dir} holds no weights")
        for key in keys:
            shape = tuple(handle.get_slice(key).get_shape())
            for part, axis in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
                if not key.endswith(part):
                    continue
                module = key[: -len(part)].removeprefix("base_model.model.")
                base = base_shapes.get(module + ".weight")
                if base_shapes and base is None:
                    raise InvalidRequest(f"adapter {adapter_dir} adapts {module}, which the base model {base_dir} does not have")
                if base is not None and shape[axis] != base[axis]:  # A: (r, in), B: (out, r), W: (out, in)
                    raise InvalidRequest(
                        f"adapter {adapter_dir}: {key} has shape {shape}, which does not fit {module} {base} of {base_dir}"
                    )
    return config
