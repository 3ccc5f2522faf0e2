"""HTTP reward: the user's own scoring service, one POST per batch.

Contract: POST {"prompts": [...], "responses": [...]} as JSON; the reply is {"scores": [...]},
one number per response, in order. Anything else is a RewardError naming what went wrong.

What reaches a client (a RewardError's message) names the scorer by its public URL and carries
no part of the scorer's reply, nor its headers: the reply goes to the log, with the headers'
values cut out. Connections go only to addresses the NetworkPolicy permits, checked on the address
actually connected to; redirects are not followed; proxy variables of the environment are not used
(a proxy would be the address connected to, hiding the real target).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import httpcore
import httpx

from shared.errors import RewardError
from shared.rewards.batch import BatchReward
from shared.rewards.net import NetworkPolicy, TargetRefused
from shared.rewards.specs import REDACTED, HTTPSpec, public_url

log = logging.getLogger(__name__)

LOGGED_REPLY_CHARS = 500


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, but it resolves the host itself, refuses unless every address is
    permitted, and connects to a checked address (TLS still verifies, and SNI still names, the host)."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self._policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        try:
            addresses = self._policy.addresses(host, port)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # resolve() returns at least one address or raises
        raise failure


def scorer_client(policy: NetworkPolicy, timeout: float) -> httpx.Client:
    """An httpx client whose every connection passes the policy."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public way to give httpcore a network backend; the pool is its one seam.
    transport._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=_GuardedBackend(policy))
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


def missing_secrets(spec: HTTPSpec) -> list[str]:
    """Environment variables named by headers_from_env that are not set here."""
    return [variable for variable in spec.headers_from_env.values() if not os.environ.get(variable)]


class HTTPReward(BatchReward):
    def __init__(self, spec: HTTPSpec, network: NetworkPolicy) -> None:
        self.name = f"http:{public_url(spec.url)}"
        self._spec = spec
        self._network = network

    def _headers(self) -> dict[str, str]:
        # Read per batch: an operator can rotate a secret without restarting the teacher.
        if missing := missing_secrets(self._spec):
            raise RewardError(f"{self.name}: environment variable(s) {', '.join(missing)} named by headers_from_env are not set on the teacher")
        return {**self._spec.headers, **{name: os.environ[variable] for name, variable in self._spec.headers_from_env.items()}}

    def _scrub(self, text: str, headers: dict[str, str]) -> str:
        """The reply for the log, without any header value a scorer might echo back."""
        for value in headers.values():
            if value:
                text = text.replace(value, REDACTED)
        return text[:LOGGED_REPLY_CHARS]

    def _fail(self, message: str, reply: httpx.Response | None, headers: dict[str, str]) -> RewardError:
        if reply is not None:
            log.warning("%s: %s; the scorer replied HTTP %d: %r", self.name, message, reply.status_code, self._scrub(reply.text, headers))
        return RewardError(f"{self.name}: {message} (the reply is in the teacher's log)")

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        headers = self._headers()
        try:
            with scorer_client(self._network, self._spec.timeout) as client:
                reply = client.post(self._spec.url, json={"prompts": prompts, "responses": responses}, headers=headers)
        except TargetRefused as exc:
            log.warning("%s: %s", self.name, exc.message)
            raise RewardError(f"{self.name}: refused to connect: the scorer's address is not public and the operator has not allowed it") from None
        except httpx.HTTPError as exc:
            log.warning("%s: request failed: %s", self.name, self._scrub(f"{type(exc).__name__}: {exc}", headers))
            raise RewardError(f"{self.name}: request failed ({type(exc).__name__})") from None
        if reply.is_redirect:
            raise self._fail(f"the scorer answered a redirect (HTTP {reply.status_code}), which is not followed", reply, headers)
        if reply.status_code >= 400:
            raise self._fail(f"the scorer answered HTTP {reply.status_code}", reply, headers)
        try:
            body: Any = reply.json()
        except ValueError:
            raise self._fail("the answer is not JSON", reply, headers) from None
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or not all(_is_number(value) for value in scores):
            raise self._fail('the answer must be {"scores": [numbers]}', reply, headers)
        if len(scores) != len(responses):
            raise RewardError(f"{self.name}: the answer has {len(scores)} scores for {len(responses)} responses")
        return scores


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but true/false is not a score.
    return isinstance(value, (int, float)) and not isinstance(value, bool)
