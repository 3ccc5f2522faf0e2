"""Where an http reward may connect, and what of it may be shown: the address rules (Python's
ipaddress), real resolution (the system resolver and /etc/hosts), a real scorer on loopback.

No stand-ins: where a test needs the teacher's host to resolve a name differently, it is in
tests/teacher/test_reward_secrets.py, in a process of its own with its own /etc/hosts."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from scorer import REPLY_TOKEN, running_scorer
from shared.errors import InvalidRequest, RewardError
from shared.rewards import build_reward, check_reward, parse_reward_spec, public_reward
from shared.rewards.http import HTTPReward
from shared.rewards.net import NetworkPolicy, TargetRefused, is_public, parse_allow_entry
from shared.rewards.specs import REDACTED, HTTPSpec

LOOPBACK_ALLOWED = NetworkPolicy.parse(allow=["127.0.0.1/32"])
SECRET = "Bearer scorer-secret-7d1e"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",  # loopback, private, link-local metadata
        "100.100.100.200", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",  # CGNAT, unspecified, multicast, reserved
        "192.0.2.1", "198.18.0.1",  # documentation, benchmarking
        "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "2001:db8::1",  # IPv6 loopback .. documentation
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::8.8.8.8",  # IPv4-mapped, IPv4-compatible
        "2002:7f00:1::", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1", "64:ff9b:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # 6to4, NAT64, Teredo
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert not is_public(parsed)
    assert not NetworkPolicy().permits("scorer.example.com", parsed)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "2a00:1450:4001:80b::200e", "64:ff9b::808:808"])
def test_public_addresses_are_permitted(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_operator_allowances() -> None:
    loopback, private = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.2.3.4")
    assert NetworkPolicy(allow_private=True).permits("any", loopback)
    policy = NetworkPolicy.parse(allow=["10.2.0.0/16", "Scorer.Internal."])
    assert policy.permits("elsewhere", private) and not policy.permits("elsewhere", loopback)
    assert policy.permits("scorer.internal", loopback)  # a host allowed by name, wherever it resolves
    with pytest.raises(ValueError, match="neither a host name nor a CIDR"):
        parse_allow_entry("http://scorer/")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/score", "http://localhost:9/", "http://[::1]:9/", "http://2130706433/",
                                 "http://0x7f.1/", "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/"])
def test_creation_check_resolves_and_refuses(url: str) -> None:
    # Real resolution: localhost via /etc/hosts; 2130706433 and 0x7f.1 are what inet_aton reads as 127.0.0.1.
    with pytest.raises(TargetRefused) as info:
        check_reward({"type": "http", "url": url}, network=NetworkPolicy())
    assert info.value.status_code == 400 and info.value.param == "reward.url"
    assert "not a public address" in info.value.message and "DSC_REWARD_HTTP_ALLOW" in info.value.message
    check_reward({"type": "http", "url": url}, network=NetworkPolicy(allow_private=True))  # the operator allows it


def test_creation_check_names_a_host_that_does_not_resolve() -> None:
    with pytest.raises(InvalidRequest, match="does not resolve"):
        check_reward({"type": "http", "url": "http://scorer.invalid/score"}, network=NetworkPolicy())


def test_build_refuses_loopback_by_default() -> None:
    with running_scorer() as scorer:
        with pytest.raises(TargetRefused):
            build_reward({"type": "http", "url": f"{scorer.url}/score"})
        assert build_reward({"type": "http", "url": f"{scorer.url}/score"}, network=LOOPBACK_ALLOWED).score(["p"], ["abc"]) == [3.0]


def test_the_connection_itself_is_checked() -> None:
    """A reward built past the creation check (a task created while the operator allowed private
    targets, then the policy tightened) still cannot connect: the check is at connect time."""
    with running_scorer() as scorer:
        reward = HTTPReward(HTTPSpec(url=f"{scorer.url}/score", headers={"Authorization": SECRET}), NetworkPolicy())
        with pytest.raises(RewardError) as info:
            reward.score(["p"], ["a"])
        assert "refused to connect" in info.value.message and "resolves to" not in info.value.message  # the detail is for the log
        assert scorer.requests == []  # nothing left the teacher


def test_redirects_are_not_followed() -> None:
    with running_scorer() as scorer:
        reward = build_reward({"type": "http", "url": f"{scorer.url}/redirect"}, network=LOOPBACK_ALLOWED)
        with pytest.raises(RewardError, match="redirect"):
            reward.score(["p"], ["a"])
        assert [r["path"] for r in scorer.requests] == ["/redirect"]


@pytest.mark.parametrize("path", ["/leak", "/garbled"])
def test_errors_carry_no_part_of_the_reply_and_logs_no_secret(path: str, caplog) -> None:
    with running_scorer() as scorer, caplog.at_level(logging.WARNING, logger="shared.rewards.http"):
        reward = build_reward({"type": "http", "url": f"{scorer.url}{path}?api_key=q-secret", "headers": {"Authorization": SECRET}},
                              network=LOOPBACK_ALLOWED)
        with pytest.raises(RewardError) as info:
            reward.score(["p"], ["a"])
        assert scorer.requests[0]["headers"]["Authorization"] == SECRET  # the scorer did get the header
    message = info.value.message
    assert REPLY_TOKEN not in message and "scorer-secret" not in message and "q-secret" not in message
    assert "teacher's log" in message and f"api_key={REDACTED}" in message
    assert REPLY_TOKEN in caplog.text  # the reply is in the log, for the operator ...
    assert "scorer-secret" not in caplog.text and "q-secret" not in caplog.text  # ... without the secrets it echoed


def test_headers_from_env_send_the_environment_value(monkeypatch) -> None:
    monkeypatch.setenv("DSC_REWARD_SECRET_SCORER", SECRET)
    spec = {"type": "http", "url": "http://127.0.0.1:9/score", "headers_from_env": {"Authorization": "DSC_REWARD_SECRET_SCORER"}}
    with running_scorer() as scorer:
        spec["url"] = f"{scorer.url}/score"
        assert build_reward(spec, network=LOOPBACK_ALLOWED).score(["p"], ["ab"]) == [2.0]
        assert scorer.requests[0]["headers"]["Authorization"] == SECRET
    assert public_reward(parse_reward_spec(spec).model_dump())["headers_from_env"] == {"Authorization": "DSC_REWARD_SECRET_SCORER"}
    monkeypatch.delenv("DSC_REWARD_SECRET_SCORER")
    with pytest.raises(InvalidRequest, match="DSC_REWARD_SECRET_SCORER, which are not set"):
        check_reward(spec, network=LOOPBACK_ALLOWED)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"url": "https://user:pw@scores.example.com/"}, "must not carry credentials"),
        ({"url": "https://scores.example.com/", "headers_from_env": {"Authorization": "DSC_DATABASE_URL"}}, "DSC_REWARD_SECRET_"),
        ({"url": "https://scores.example.com/", "headers_from_env": {"Authorization": "HOME"}}, "DSC_REWARD_SECRET_"),
        ({"url": "https://scores.example.com/", "headers": {"Authorization": REDACTED}}, "give the real value"),
        ({"url": "https://scores.example.com/", "headers": {"X-Key": "a"}, "headers_from_env": {"x-key": "DSC_REWARD_SECRET_A"}}, "both"),
        ({"url": "https://scores.example.com/", "headers": {"Bad Header": "a"}}, "not a valid HTTP header name"),
    ],
)
def test_spec_refuses_secrets_in_the_wrong_place(spec: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_reward_spec({"type": "http", **spec})


def test_public_reward_redacts_every_secret() -> None:
    spec = parse_reward_spec({"type": "http", "url": "https://scores.example.com/v1?token=abc&x=", "headers": {"Authorization": SECRET, "X-Org": "o"}})
    shown = public_reward(spec.model_dump(exclude_none=True))
    assert shown["headers"] == {"Authorization": REDACTED, "X-Org": REDACTED}
    assert shown["url"] == f"https://scores.example.com/v1?token={REDACTED}&x={REDACTED}"
    assert "abc" not in str(shown) and "scorer-secret" not in str(shown)
    assert public_reward({"type": "vader"}) == {"type": "vader"}
