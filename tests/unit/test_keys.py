"""Keys held as digests, database URLs redacted, per-key rates (the real `limits` library)."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from shared.db.session import redacted_url
from shared.keys import configured_digest, hash_key, key_id
from shared.settings import Settings
from shared.web.ratelimit import KeyRateLimiter


def test_settings_hold_digests_only() -> None:
    digest = "sha256:" + hashlib.sha256(b"second-key").hexdigest()
    settings = Settings(api_keys="first-key, " + digest.upper().replace("SHA256:", "sha256:"), admin_token="the-admin")
    assert settings.api_keys == [hash_key("first-key"), digest]  # a digest as given (any case), a plain key hashed
    assert settings.admin_token == hash_key("the-admin")
    dumped = repr(settings) + settings.model_dump_json()
    assert "first-key" not in dumped and "the-admin" not in dumped
    assert Settings(admin_token="  ").admin_token is None


def test_key_ids_name_keys_without_their_material() -> None:
    digest = configured_digest("client-a")
    assert key_id(digest) == hashlib.sha256(b"client-a").hexdigest()[:16]
    assert key_id(digest) != key_id(configured_digest("client-b"))


def test_bad_rates_and_allow_entries_fail_at_load() -> None:
    with pytest.raises(ValidationError, match="not a rate"):
        Settings(rate_limit="lots")
    with pytest.raises(ValidationError, match="neither a host name nor a CIDR"):
        Settings(reward_http={"allow": "http://scorer/"})
    assert Settings(rate_limit="10/second;600/minute").rate_limit == "10/second;600/minute"


def test_rate_limiter_counts_per_key_and_says_when() -> None:
    limiter = KeyRateLimiter("2/minute")
    assert limiter.admit("a") is None and limiter.admit("a") is None
    wait = limiter.admit("a")
    assert wait is not None and 1 <= wait <= 60
    assert limiter.admit("b") is None  # another key has its own window


def test_a_refused_request_is_not_counted_against_the_other_window() -> None:
    limiter = KeyRateLimiter("1/second;3/minute")
    assert limiter.admit("a") is None
    assert limiter.admit("a") is not None  # the per-second window is full
    assert limiter._limiter.get_window_stats(limiter._items[1], "a").remaining == 2  # the refusal used no minute quota


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://dsc:hunter2@db:5432/dsc", "postgresql+psycopg://dsc:***@db:5432/dsc"),
        ("postgresql+psycopg://u:p%40ss@h/d", "postgresql+psycopg://u:***@h/d"),
        ("sqlite:////data/dsc.db", "sqlite:////data/dsc.db"),
    ],
)
def test_database_urls_are_redacted(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
