"""GET /v1/pairs/export?format=preference over real HTTP, on SQLite and Postgres: the preference
pairs match what the stored chains say (recomputed here from the rows), come out whole across
keyset pages, leave out chains excluded in review and other keys' chains, and are conversations
the student's chat template renders."""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import select

from shared.db.models import ChainRecord, Pair

CLIENT_KEY = "teacher-test-client-key"  # the suite's (tests/teacher/conftest.py)
KEY_B = "another-tenants-key"


def _export(client, **params) -> list[dict]:
    with client.stream("GET", "/v1/pairs/export", params={"format": "preference", **params}) as response:
        assert response.status_code == 200, response.read()
        assert 'filename="preferences.jsonl"' in response.headers["content-disposition"]
        return [json.loads(line) for line in response.iter_lines() if line]


def _expected(chains: list[ChainRecord], excluded: set[int]) -> set[tuple]:
    """(source, chosen, rejected) the chains imply, computed apart from the service's code."""
    kept = [chain for chain in chains if chain.id not in excluded]
    out = set()
    for chain in kept:
        if chain.initial_text != chain.final_text and chain.initial_reward != chain.final_reward:
            better = chain.final_reward > chain.initial_reward
            out.add(("revision", chain.final_text if better else chain.initial_text, chain.initial_text if better else chain.final_text))
    groups = defaultdict(list)
    for chain in kept:
        groups[(chain.job_id, chain.prompt_index)].append(chain)
    for group in groups.values():
        ranked = sorted(group, key=lambda chain: chain.final_reward)
        worst, best = ranked[0], ranked[-1]
        if len(group) > 1 and best.final_text != worst.final_text and best.final_reward != worst.final_reward:
            out.add(("chains", best.final_text, worst.final_text))
    return out


def test_preference_pairs_come_from_the_stored_chains(make_teacher, teacher_db_url, model_path):
    from transformers import AutoTokenizer

    teacher = make_teacher(teacher_db_url, jobs={"batch_size": 2}, teacher={"export_page_size": 3}, api_keys=[CLIENT_KEY, KEY_B])
    prompts = [f"Write a harsh review of the {thing}." for thing in ("bus", "train", "ferry", "tram", "cable car")]
    with teacher.client() as client, teacher.client(KEY_B) as other, teacher.client(teacher.admin_token) as admin:
        job = client.post("/v1/jobs", json={"task": "sentiment", "prompts": prompts, "chains": 2, "acceptance": "always",
                                            "max_tokens": 8, "seed": 3})
        assert job.status_code == 202, job.text
        assert teacher.wait_job(job.json()["id"])["status"] == "succeeded"
        with teacher.sessions() as session:
            chains = list(session.scalars(select(ChainRecord).order_by(ChainRecord.id)))
            pairs = {pair.chain_id: pair.id for pair in session.scalars(select(Pair))}
        assert len(chains) == 10

        records = _export(client)  # pages of 3 chains: groups of 2 must not be split
        assert {(r["source"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records} == _expected(chains, set())
        assert len(records) == len(_expected(chains, set())) > 0
        for record in records:
            assert record["margin"] == record["chosen_reward"] - record["rejected_reward"] > 0
            assert record["prompt"][0]["role"] == "user" and record["prompt"][0]["content"] in prompts
            assert record["chosen"][0]["role"] == record["rejected"][0]["role"] == "assistant" and record["task"] == "sentiment"
        assert _export(admin) == records and _export(other) == []  # another key sees none of these chains
        by_id = {chain.id: chain for chain in chains}
        for record in records:  # each side carries its own answer's cut-off flag, as the chain row stores it
            sides = [(by_id[i].initial_text, by_id[i].initial_truncated) for i in record["chain_ids"]]
            sides += [(by_id[i].final_text, by_id[i].final_truncated) for i in record["chain_ids"]]
            flags = {text: flag for text, flag in sides}
            assert record["chosen_truncated"] == flags[record["chosen"][0]["content"]]
            assert record["rejected_truncated"] == flags[record["rejected"][0]["content"]]
        assert any(record["chosen_truncated"] for record in records)  # 8-token answers run into max_tokens

        tokenizer = AutoTokenizer.from_pretrained(model_path)  # what a DPO trainer renders: prompt + each answer
        for record in records[:3]:
            for side in ("chosen", "rejected"):
                text = tokenizer.apply_chat_template(record["prompt"] + record[side], tokenize=False)
                assert record[side][0]["content"] in text and record["prompt"][0]["content"] in text

        margins = sorted(record["margin"] for record in records)
        middle = margins[len(margins) // 2]
        assert all(record["margin"] >= middle for record in _export(client, min_gain=middle))
        assert len(_export(client, min_gain=middle)) == sum(1 for margin in margins if margin >= middle)

        chain = next(c for c in chains if c.id in pairs)  # excluded in review: its chain prefers nothing any more
        assert admin.put(f"/admin/pairs/{pairs[chain.id]}/exclusion", json={"reason": "off topic"}).status_code == 200
        assert {(r["source"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in _export(client)} == _expected(chains, {chain.id})
        assert all(chain.id not in record["chain_ids"] for record in _export(client))

        only_excluded = _export(client, excluded="true")  # the review's exclusions, on their own
        assert only_excluded and all(record["chain_ids"] == [chain.id] for record in only_excluded if record["source"] == "revision")
        assert _export(client, excluded="false") == _export(client)
