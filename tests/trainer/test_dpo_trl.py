"""The preference data and the DPO loss against TRL's own (trl 1.16, requirements/test.txt):

- pairs exported over HTTP (`GET /v1/pairs/export?format=preference`, chains from the real sampler)
  load into a `datasets.Dataset` and through `DPOTrainer`'s own data preparation, and TRL's prompt
  and answer tokens are exactly the trainer's: the same chat template, the same tokens trained;
- on the same batch, with a policy that has moved away from its reference, the trainer's DPO loss
  equals the loss TRL's `DPOTrainer.compute_loss` computes (sigmoid loss, β, summed answer log-probs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.distill import load_tokenizer
from services.trainer.dpo import dpo_loss, pair_logps, tokenize_preferences
from shared.distillation.preferences import Preference

BETA = 0.25


def _exported(helpers, teacher, make_settings, sentiment_samples) -> list[dict]:
    settings = make_settings()
    helpers.store_samples(helpers.migrated(settings), sentiment_samples)
    with teacher(settings) as t, t.admin() as admin:
        with admin.stream("GET", "/v1/pairs/export", params={"format": "preference", "task": "sentiment"}) as response:
            assert response.status_code == 200, response.read()
            return [json.loads(line) for line in response.iter_lines() if line]


@pytest.fixture()
def trl_trainer(tmp_path: Path, model_path: Path, helpers, teacher, make_settings, sentiment_samples):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    records = _exported(helpers, teacher, make_settings, sentiment_samples)
    assert len(records) >= 2 and {record["source"] for record in records} <= {"revision", "chains"}
    tokenizer = load_tokenizer(model_path)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, report_to=[], use_cpu=True, max_length=None,
                     per_device_train_batch_size=len(records), logging_strategy="no", save_strategy="no")
    model = AutoModelForCausalLM.from_pretrained(model_path)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer)
    return trainer, records, tokenizer


def test_the_preference_export_goes_through_trls_dpo_data_loader_to_the_trainers_tokens(trl_trainer):
    trainer, records, tokenizer = trl_trainer
    prepared = trainer.train_dataset
    assert len(prepared) == len(records)
    ours, skipped = tokenize_preferences(tokenizer, [Preference.of(record) for record in records], max_seq_len=4096)
    assert skipped == 0
    for row, item in zip(prepared, ours):
        prompt = row["prompt_ids"]
        assert item.chosen.input_ids == prompt + row["chosen_ids"]
        assert item.rejected.input_ids == prompt + row["rejected_ids"]
        # Trained tokens: the answers only, the prompt masked, as TRL's completion mask has them.
        assert item.chosen.labels == [-100] * len(prompt) + row["chosen_ids"]
        assert item.rejected.labels == [-100] * len(prompt) + row["rejected_ids"]


def test_the_trainers_dpo_loss_is_trls(trl_trainer):
    import torch

    trainer, records, tokenizer = trl_trainer
    policy_model = trainer.model
    with torch.no_grad():  # move the policy away from the reference (TRL keeps its own copy as ref_model)
        generator = torch.Generator().manual_seed(0)
        for name, weight in policy_model.named_parameters():
            if name.endswith("mlp.down_proj.weight"):
                weight.add_(torch.randn(weight.shape, generator=generator) * 0.02)
    policy_model.eval()
    trainer.ref_model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    with torch.no_grad():
        theirs = float(trainer.compute_loss(policy_model, batch))
        items, _ = tokenize_preferences(tokenizer, [Preference.of(record) for record in records], max_seq_len=4096)
        policy = pair_logps(policy_model, items, tokenizer.pad_token_id, "cpu")
        reference = pair_logps(trainer.ref_model, items, tokenizer.pad_token_id, "cpu")
        ours = float(dpo_loss(policy, reference, BETA).mean())
    assert abs(ours - 0.6931) > 1e-3  # the policy has moved: a loss at log 2 would compare nothing
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5)
