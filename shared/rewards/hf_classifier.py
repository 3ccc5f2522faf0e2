"""A local Hugging Face sequence classifier (e.g. the distilBERT sentiment model the paper used)."""

from __future__ import annotations

from pathlib import Path

from shared.errors import InvalidRequest
from shared.rewards.batch import BatchReward
from shared.rewards.specs import HFClassifierSpec


class HFClassifierReward(BatchReward):
    """score = Σ_label softmax(logits)[label] × labels[label]: an expected value over the classes."""

    def __init__(self, spec: HFClassifierSpec) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(spec.path).expanduser()
        self.name = f"hf-classifier:{path.name}"
        self._batch_size = spec.batch_size
        try:
            # local_files_only: a missing file must fail here, not trigger a hub download.
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidRequest(
                f"hf-classifier: cannot load a sequence classifier from {str(path)!r}: {exc}", param="reward.path"
            ) from None
        self._model.to("cpu").eval()
        # Truncate to what both the tokenizer and the position embeddings allow, whichever is smaller.
        positions = getattr(self._model.config, "max_position_embeddings", None)
        limits = [spec.max_length, self._tokenizer.model_max_length, positions]
        self._max_length = min(limit for limit in limits if limit)

        id2label = {int(index): label for index, label in self._model.config.id2label.items()}
        unknown = sorted(set(spec.labels) - set(id2label.values()))
        if unknown:
            raise InvalidRequest(
                f"hf-classifier: label(s) {', '.join(unknown)} not in the model's labels "
                f"{', '.join(id2label[i] for i in sorted(id2label))}",
                param="reward.labels",
            )
        # Value of each output class, in logit order; classes the spec leaves out are worth 0.
        values = [spec.labels.get(id2label[index], 0.0) for index in range(len(id2label))]
        self._values = torch.tensor(values, dtype=torch.float32)

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(responses), self._batch_size):
                batch = self._tokenizer(
                    responses[start : start + self._batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                )
                logits = self._model(**batch).logits.float()
                scores.extend((logits.softmax(dim=-1) @ self._values).tolist())
        return scores
