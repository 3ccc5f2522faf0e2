"""The three preset tasks, after the paper's experiments: sentiment, safety and privacy.

Each preset is a plain dict with the fields of a task (see ``shared.tasks.TaskSpec``) plus
``prompts_file``, the name of its training prompt set in the ``prompts/`` folder beside this module;
its evaluation set is the file of the same stem with ``.eval.txt`` (written separately: other
subjects, names and phrasings, so an evaluation measures generalisation, not recall).
Critique and revision requests are short and concrete on purpose: the default teacher is a
135M-parameter model, and long instructions get lost in it. Prompt sets are plain UTF-8 text
files (one prompt a line) written for this project.
"""

from __future__ import annotations

from importlib import resources

PROMPTS_DIR = "prompts"

PRESET_TASKS: dict[str, dict] = {
    # Gallego 2023, experiment 1: negative film-review requests, scored by VADER compound sentiment.
    "sentiment": {
        "name": "sentiment",
        "description": "Negative film-review requests; the chain pushes answers towards positive sentiment (VADER).",
        "critique_request": "Point out every negative, harsh or hostile phrase in your answer.",
        "revision_request": (
            "Rewrite your answer so it is warm, positive and kind, fixing every "
            "point above. Reply with the rewritten answer only."
        ),
        "reward": {"type": "vader"},
        "second_opinion": {"type": "textblob"},  # another lexicon: a student that games VADER's rules shows here
        "acceptance": "improve",
        "beta": 1.0,
        "steps": 1,
        # A revision that is better than its draft but still negative teaches the wrong thing.
        "train_min_reward": 0.3,
        "prompts_file": "sentiment.txt",
    },
    # Experiment 2: requests inviting insults and abuse, scored by an offensive-language classifier.
    "safety": {
        "name": "safety",
        "description": (
            "Requests that invite insults and abuse; the chain pushes "
            "answers towards harmless, polite language."
        ),
        "critique_request": "Point out anything insulting, rude, aggressive or offensive in your answer.",
        "revision_request": (
            "Rewrite your answer so it is polite, respectful and free of insults "
            "or swear words. Reply with the rewritten answer only."
        ),
        "reward": {"type": "profanity"},
        "second_opinion": {"type": "wordlist"},  # a word list beside the learned classifier
        "acceptance": "improve",
        "beta": 1.0,
        "steps": 1,
        "train_min_reward": 0.9,  # 1 - p(offensive): most first answers are already mild
        # docs/distillation.md: one epoch of DPO beat SFT here (more gain, 2 of 3 seeds promotable against 0 of 3)
        "distillation": {"objective": "dpo", "epochs": 1},
        "prompts_file": "safety.txt",
    },
    # Experiment 3: writing requests inviting personal data, scored by (negated) PERSON/PII counts.
    "privacy": {
        "name": "privacy",
        "description": (
            "News and writing requests that invite personal data; the "
            "chain pushes answers towards anonymised text."
        ),
        "critique_request": "List every name, address, e-mail, phone number or other personal detail in your answer.",
        "revision_request": (
            "Rewrite your answer without any names or personal details: use roles such as "
            "'a local resident' instead. Reply with the rewritten answer only."
        ),
        "reward": {"type": "pii"},
        "second_opinion": {"type": "presidio"},  # Presidio's own recognisers
        "acceptance": "improve",
        "beta": 1.0,
        "steps": 1,
        "train_min_reward": 0.0,  # minus the count of names and personal details: train on answers with none
        "prompts_file": "privacy.txt",
    },
}


def eval_file_name(prompts_file: str) -> str:
    """sentiment.txt → sentiment.eval.txt"""
    return prompts_file.removesuffix(".txt") + ".eval.txt"


def load_preset_prompts(file_name: str) -> list[str]:
    """Return the prompts in ``prompts/<file_name>``, one a line, blank lines dropped.

    Read through ``importlib.resources`` so it works from an installed wheel, not only a checkout.
    """
    if "/" in file_name or "\\" in file_name or file_name in {"", ".", ".."}:
        raise ValueError(f"prompt set must be a plain file name, got {file_name!r}")
    text = resources.files(__package__).joinpath(PROMPTS_DIR, file_name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
