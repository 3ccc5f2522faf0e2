"""Reward models on real text with the real packages (VADER, spaCy, alt-profanity-check, a real HTTP server).

The only stand-in is `ScriptedJudge`, which replays fixed answers so the llm-judge parsing and
error paths can be pinned down exactly; the judge with a real model is tested with the engines.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from shared.engines.base import Conversation, Generation, SamplingParams
from shared.errors import InvalidRequest, MissingDependency, RewardError
from shared.rewards import REWARD_TYPES, RewardModel, build_reward, parse_reward_spec
from shared.rewards.llm_judge import fill_template, parse_rating
from shared.rewards.pii import find_patterns, luhn_valid
from shared.rewards.net import NetworkPolicy
from shared.rewards.specs import HTTPSpec, LLMJudgeSpec, PIISpec, VaderSpec, require

# The scoring server below listens on loopback, which http rewards may reach only where the operator
# allows it (DSC_REWARD_HTTP_ALLOW): these tests are that operator.
LOOPBACK_ALLOWED = NetworkPolicy.parse(allow=["127.0.0.1/32"])

GLOWING = "What a wonderful, delightful film! The cast is brilliant and I loved every minute of it."
HOSTILE = "This film is a terrible, hateful mess. The acting is awful and I despise everyone involved."


# --- specs -------------------------------------------------------------------------------------


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_reward_spec({"type": "sentiment-magic"})
    assert "'sentiment-magic'" in info.value.message
    for known in REWARD_TYPES:
        assert known in info.value.message
    with pytest.raises(InvalidRequest, match="needs a 'type'"):
        parse_reward_spec({})
    with pytest.raises(InvalidRequest, match="must be an object"):
        parse_reward_spec("vader")  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["ftp://example.com/score", "localhost:8000/score", "http:///score", ""])
def test_http_spec_rejects_a_non_http_url(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_reward_spec({"type": "http", "url": url})
    assert "url" in info.value.message and info.value.param == "reward.url"


def test_hf_classifier_spec_needs_an_existing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(InvalidRequest) as info:
        parse_reward_spec({"type": "hf-classifier", "path": str(missing)})
    assert str(missing) in info.value.message and "not an existing directory" in info.value.message


def test_spec_field_errors_name_the_field() -> None:
    with pytest.raises(InvalidRequest, match="entity_label: unknown field"):
        parse_reward_spec({"type": "pii", "entity_label": ["PERSON"]})
    with pytest.raises(InvalidRequest, match=r"timeout: Input should be greater than 0"):
        parse_reward_spec({"type": "http", "url": "http://127.0.0.1:1/", "timeout": 0})
    with pytest.raises(InvalidRequest, match=r"\{response\} placeholder"):
        parse_reward_spec({"type": "llm-judge", "prompt": "Rate {prompt} from 1 to 10."})
    with pytest.raises(InvalidRequest, match="must be below max_score"):
        parse_reward_spec({"type": "llm-judge", "min_score": 5, "max_score": 5})
    with pytest.raises(InvalidRequest, match="counts nothing"):
        parse_reward_spec({"type": "pii", "entity_labels": [], "patterns": False})


def test_missing_package_names_what_to_install() -> None:
    with pytest.raises(MissingDependency, match="pip install dsc-no-such-package"):
        require("example", "dsc_no_such_package_xyz", "dsc-no-such-package")
    require("vader", "vaderSentiment", "vaderSentiment")  # installed: no error


def test_specs_round_trip_as_plain_json() -> None:
    # Tasks store model_dump(exclude_none=True) in the database and use its JSON as a cache key.
    for data in (
        {"type": "vader"},
        {"type": "ner"},
        {"type": "pii", "entity_labels": ["PERSON", "ORG"], "patterns": False},
        {"type": "profanity"},
        {"type": "llm-judge", "min_score": 0, "max_score": 5, "default": 0},
        {"type": "llm-judge"},
        {"type": "http", "url": "https://scores.example.com/v1/score", "headers": {"Authorization": "Bearer x"}},
    ):
        spec = parse_reward_spec(data)
        dumped = spec.model_dump(exclude_none=True)
        assert json.loads(json.dumps(dumped)) == dumped
        assert parse_reward_spec(dumped) == spec
    assert isinstance(parse_reward_spec({"type": "ner"}), PIISpec)
    assert parse_reward_spec({"type": "llm-judge"}).default is None
    assert parse_reward_spec(VaderSpec()) == VaderSpec()


# --- the shared batch checks (through the cheapest real reward) -----------------------------------


@pytest.fixture(scope="module")
def vader() -> RewardModel:
    return build_reward({"type": "vader"})


def test_batch_checks(vader: RewardModel) -> None:
    assert isinstance(vader, RewardModel)
    assert vader.score([], []) == []
    with pytest.raises(InvalidRequest, match="2 prompts but 1 responses"):
        vader.score(["a", "b"], ["x"])
    with pytest.raises(InvalidRequest, match="not a string"):
        vader.score("a prompt", "a response")


# --- VADER ---------------------------------------------------------------------------------------


def test_vader_ranks_a_glowing_review_above_a_hostile_one(vader: RewardModel) -> None:
    glowing, hostile, neutral = vader.score(["Review the film."] * 3, [GLOWING, HOSTILE, ""])
    assert -1.0 <= hostile < 0 < glowing <= 1.0
    assert neutral == 0.0


# --- PII -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pii() -> RewardModel:
    return build_reward({"type": "pii"})


def test_pii_counts_people(pii: RewardModel) -> None:
    (score,) = pii.score(["Who was there?"], ["Alice met Bob and Carol in Paris."])
    assert score <= -2  # at least two of the three people; Paris (GPE) is not counted by default


def test_pii_catches_email_phone_and_card(pii: RewardModel) -> None:
    texts = [
        "You can write to the office at support.team@example.com any time.",
        "For bookings call 555-123-4567 during the week.",
        "The card on file is 4111 1111 1111 1111.",
        "Write to j.doe@example.org, call +44 20 7946 0958 or pay with 4111-1111-1111-1111.",
    ]
    assert pii.score([""] * 4, texts) == [-1.0, -1.0, -1.0, -3.0]


def test_pii_clean_text_scores_zero(pii: RewardModel) -> None:
    clean = [
        "The weather was mild and the river was calm all afternoon.",
        "On 2024-01-15 the plant shipped 10 000 000 units, up 12% on the year.",
        "",
    ]
    assert pii.score([""] * 3, clean) == [0.0, 0.0, 0.0]


def test_pii_patterns() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    count, masked = find_patterns("Card 4111 1111 1111 1112, order 2024-01-15, mail a@b.io, tel (555) 123-4567.")
    assert count == 2  # the e-mail and the phone; the card fails Luhn, the date is no phone
    assert "a@b.io" not in masked and "4111 1111 1111 1112" in masked


def test_pii_unknown_entity_label_fails_at_build() -> None:
    with pytest.raises(InvalidRequest, match="PERSONS") as info:
        build_reward({"type": "ner", "entity_labels": ["PERSONS"]})
    assert "PERSON" in info.value.message.split("knows", 1)[1]


# --- profanity -----------------------------------------------------------------------------------


def test_profanity_scores_an_insult_below_a_polite_sentence() -> None:
    reward = build_reward({"type": "profanity"})
    texts = ["Shut up, you stupid worthless idiot.", "Thank you so much for your kind help."]
    insult, polite = reward.score(["Reply."] * 2, texts)
    assert 0.0 <= insult < polite <= 1.0
    assert polite > 0.9 and insult < 0.5


# --- HTTP ----------------------------------------------------------------------------------------


class _ScoringHandler(BaseHTTPRequestHandler):
    """A real scoring service: /score answers len(response); other paths answer wrongly on purpose."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        replies = {
            "/score": (200, json.dumps({"scores": [float(len(r)) for r in body["responses"]]})),
            "/bad-shape": (200, json.dumps({"score": 1.0})),
            "/short": (200, json.dumps({"scores": [1.0]})),
            "/strings": (200, json.dumps({"scores": ["high"] * len(body["responses"])})),
            "/not-json": (200, "scores: 1, 2"),
            "/boom": (500, "internal error"),
        }
        status, text = replies.get(self.path, (404, "no such path"))
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def scoring_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScoringHandler)  # port 0: the OS picks a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_reward_scores_through_the_service(scoring_server: str) -> None:
    _ScoringHandler.requests.clear()
    spec = {"type": "http", "url": f"{scoring_server}/score", "headers": {"Authorization": "Bearer t0k"}}
    reward = build_reward(spec, network=LOOPBACK_ALLOWED)
    assert reward.score(["p1", "p2", "p3"], ["a", "abcd", ""]) == [1.0, 4.0, 0.0]
    assert reward.score([], []) == []  # an empty batch makes no request
    assert len(_ScoringHandler.requests) == 1
    request = _ScoringHandler.requests[0]
    assert request["body"] == {"prompts": ["p1", "p2", "p3"], "responses": ["a", "abcd", ""]}
    assert request["auth"] == "Bearer t0k"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/bad-shape", "must be"),
        ("/strings", "must be"),
        ("/short", "1 scores for 2 responses"),
        ("/not-json", "not JSON"),
        ("/boom", "HTTP 500"),
    ],
)
def test_http_reward_wrong_answers_are_reward_errors(scoring_server: str, path: str, message: str) -> None:
    reward = build_reward({"type": "http", "url": scoring_server + path, "timeout": 5}, network=LOOPBACK_ALLOWED)
    with pytest.raises(RewardError, match=message):
        reward.score(["p", "q"], ["a", "b"])


def test_http_reward_server_down_is_a_reward_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reward = build_reward(HTTPSpec(url=f"http://127.0.0.1:{port}/score", timeout=2), network=LOOPBACK_ALLOWED)
    with pytest.raises(RewardError, match="request failed"):
        reward.score(["p"], ["a"])


# --- LLM judge -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("8", 8.0),
        ("7.5", 7.5),
        ("Rating: 9/10", 9.0),
        ("**6**", 6.0),
        ("I would give it a 10.", 10.0),
        ("Out of 100 possible, 4", 4.0),  # 100 is out of range, 4 is the first in range
        ("0", None),
        ("eleven", None),
        ("", None),
    ],
)
def test_parse_rating(answer: str, expected: float | None) -> None:
    assert parse_rating(answer, 1, 10) == expected


def test_parse_rating_negative_range() -> None:
    assert parse_rating("score: -0.5", -1, 1) == -0.5


def test_fill_template_keeps_braces_in_user_text() -> None:
    filled = fill_template('Q: {prompt}\nA: {response}\nJSON like {"x": 1} stays.', "say {response}", "{}")
    assert filled == 'Q: say {response}\nA: {}\nJSON like {"x": 1} stays.'


class ScriptedJudge:
    """Scripted stand-in for a judge model: replays fixed answers and records what it was asked.

    Not a model; it exists only to drive the llm-judge parse/default/error logic deterministically.
    """

    name = "scripted"
    model = "scripted-judge"

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[Conversation], SamplingParams]] = []

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]:
        self.calls.append((list(conversations), params))
        replies = self.answers[: len(conversations)]
        return [Generation(text=text, prompt_tokens=0, completion_tokens=1) for text in replies]

    def close(self) -> None:
        pass


def test_llm_judge_one_batched_call_and_parsed_scores() -> None:
    judge = ScriptedJudge(["9", "Rating: 3/10", " 7.5\n"])
    reward = build_reward({"type": "llm-judge"}, judge_engine=judge)
    assert reward.score(["p0", "p1", "p2"], ["r0", "r1", "r2"]) == [9.0, 3.0, 7.5]
    assert len(judge.calls) == 1
    conversations, params = judge.calls[0]
    assert len(conversations) == 3
    assert conversations[1][-1]["role"] == "user"
    assert "p1" in conversations[1][-1]["content"] and "r1" in conversations[1][-1]["content"]
    assert params.temperature == 0.0 and params.max_tokens == 8


def test_llm_judge_default_and_error() -> None:
    answers = ["I cannot rate this.", "6"]
    with_default = build_reward({"type": "llm-judge", "default": 0.0}, judge_engine=ScriptedJudge(answers))
    assert with_default.score(["a", "b"], ["x", "y"]) == [0.0, 6.0]

    strict = build_reward(LLMJudgeSpec(), judge_engine=ScriptedJudge(answers))
    with pytest.raises(RewardError, match="I cannot rate this."):
        strict.score(["a", "b"], ["x", "y"])


def test_llm_judge_short_reply_batch_is_an_error() -> None:
    reward = build_reward({"type": "llm-judge"}, judge_engine=ScriptedJudge(["5"]))
    with pytest.raises(RewardError, match="1 answers for 2 requests"):
        reward.score(["a", "b"], ["x", "y"])


def test_llm_judge_needs_an_engine() -> None:
    with pytest.raises(InvalidRequest, match="judge engine"):
        build_reward({"type": "llm-judge"})


# --- local Hugging Face classifier ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained, random-weight) BERT sequence classifier saved as a local model directory."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a film was great awful i loved hated it".split()]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-sentiment")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_classifier_scores_with_the_label_map(tiny_classifier: Path) -> None:
    texts = ["the film was great", "i hated it " * 100, "zzz", "i loved it"]  # the long one gets truncated
    prompts = [""] * len(texts)
    signed_reward = build_reward({"type": "hf-classifier", "path": str(tiny_classifier), "batch_size": 3})
    signed = signed_reward.score(prompts, texts)
    assert len(signed) == 4 and all(-1.0 <= s <= 1.0 for s in signed)

    positive = build_reward({"type": "hf-classifier", "path": str(tiny_classifier), "labels": {"POSITIVE": 1.0}})
    negative = build_reward({"type": "hf-classifier", "path": str(tiny_classifier), "labels": {"NEGATIVE": 1.0}})
    p_pos, p_neg = positive.score(prompts, texts), negative.score(prompts, texts)
    for pos, neg, sign in zip(p_pos, p_neg, signed):
        assert 0.0 <= pos <= 1.0
        assert pos + neg == pytest.approx(1.0, abs=1e-5)  # the two probabilities
        assert sign == pytest.approx(pos - neg, abs=1e-5)  # default map: POSITIVE=+1, NEGATIVE=-1


def test_hf_classifier_label_not_in_model_fails_at_build(tiny_classifier: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        build_reward({"type": "hf-classifier", "path": str(tiny_classifier), "labels": {"LABEL_1": 1.0}})
    assert "LABEL_1" in info.value.message and "NEGATIVE, POSITIVE" in info.value.message


def test_hf_classifier_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot load a sequence classifier"):
        build_reward({"type": "hf-classifier", "path": str(tmp_path)})
