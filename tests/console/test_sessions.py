"""Console logins are server-side sessions (SQLite and Postgres, real HTTP): the cookie holds a
random secret whose hash is all the database keeps; a session ends at its expiry, at logout and
when the admin token changes. Failed logins and bearer tokens are throttled per client address,
which, like the host the same-origin check compares, is read from forwarding headers only when the
peer is a trusted proxy."""

from __future__ import annotations

import hashlib
import time

import httpx
from sqlalchemy import select

from console_support import ADMIN_TOKEN, CLIENT_KEY, console_settings, running_teacher
from live_server import console_cookie
from shared.db.models import ConsoleSession

HTML = {"Accept": "text/html"}


def _page(url: str, secret: str) -> httpx.Response:
    return httpx.get(f"{url}/console/jobs", headers={**HTML, "Cookie": f"dsc_console={secret}"}, follow_redirects=False)


def _logged_in(url: str, secret: str) -> bool:
    response = _page(url, secret)
    assert response.status_code in (200, 303), response.text
    return response.status_code == 200


def test_sessions_are_server_side_and_end_at_expiry_logout_and_token_change(db_url, tmp_path, model_path, tf_engine):
    settings = console_settings(tmp_path, model_path, db_url, console_session_hours=2 / 3600)
    with running_teacher(settings, tf_engine) as teacher:
        secret = console_cookie(teacher.url, ADMIN_TOKEN)
        assert _logged_in(teacher.url, secret)
        with teacher.sessions() as session:
            (row,) = session.scalars(select(ConsoleSession)).all()
        assert row.id == hashlib.sha256(secret.encode()).hexdigest()  # the database has the secret's hash only
        assert secret not in row.sealed_token and ADMIN_TOKEN not in row.sealed_token
        assert 1 <= (row.expires_at - row.created_at).total_seconds() <= 3
        time.sleep(2.5)
        assert not _logged_in(teacher.url, secret)  # expired on the server, whatever the browser keeps

    settings = console_settings(tmp_path, model_path, db_url)
    with running_teacher(settings, tf_engine) as teacher:
        kept, ended = console_cookie(teacher.url, ADMIN_TOKEN), console_cookie(teacher.url, ADMIN_TOKEN)
        out = httpx.post(f"{teacher.url}/console/logout", headers={"Origin": teacher.url, "Cookie": f"dsc_console={ended}"})
        assert out.status_code == 303
        assert not _logged_in(teacher.url, ended) and _logged_in(teacher.url, kept)  # logout ends that session only
        assert httpx.get(f"{teacher.url}/v1/jobs", headers={"Cookie": f"dsc_console={kept}"}).status_code == 401  # not an API credential

    changed = console_settings(tmp_path, model_path, db_url, admin_token="a-new-admin-token")
    with running_teacher(changed, tf_engine) as teacher:
        assert not _logged_in(teacher.url, kept)  # the admin token changed: every earlier login is void
        assert _logged_in(teacher.url, console_cookie(teacher.url, "a-new-admin-token"))


def test_failed_logins_and_tokens_are_throttled_per_client_address(tmp_path, model_path, tf_engine):
    settings = console_settings(tmp_path, model_path, f"sqlite:///{tmp_path / 'throttle.db'}", auth_failure_limit="3/minute",
                                trusted_proxies=["127.0.0.1"])
    with running_teacher(settings, tf_engine) as teacher:
        def login(token: str, client: str) -> httpx.Response:
            return httpx.post(f"{teacher.url}/console/login", data={"token": token}, follow_redirects=False,
                              headers={**HTML, "Origin": teacher.url, "X-Forwarded-For": client})

        def api(token: str, client: str) -> httpx.Response:
            return httpx.get(f"{teacher.url}/v1/jobs", headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": client})

        assert [login("guess-1", "198.51.100.1").status_code, login(CLIENT_KEY, "198.51.100.1").status_code,
                api("guess-3", "198.51.100.1").status_code] == [401, 401, 401]
        blocked = login(ADMIN_TOKEN, "198.51.100.1")  # the right token, after three failures: still refused
        assert blocked.status_code == 429 and 1 <= int(blocked.headers["Retry-After"]) <= 60
        assert "too many failed authentications" in blocked.text and "set-cookie" not in blocked.headers
        refused = api(ADMIN_TOKEN, "198.51.100.1")
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        assert "DSC_AUTH_FAILURE_LIMIT" in refused.json()["error"]["message"] and refused.headers["Retry-After"]

        assert login(ADMIN_TOKEN, "198.51.100.2").status_code == 303  # another client is not held back
        assert api(CLIENT_KEY, "198.51.100.2").status_code == 200
        # a client cannot escape by naming another address before the proxy's hop: the last untrusted hop counts
        assert api(ADMIN_TOKEN, "203.0.113.9, 198.51.100.1").status_code == 429


def test_forwarded_host_counts_only_from_a_trusted_proxy(tmp_path, model_path, tf_engine):
    """A proxy that rewrites Host forwards the public one; the Origin check uses it when, and only
    when, the peer is a trusted proxy."""
    behind_proxy = {"Origin": "https://dsc.example.com", "X-Forwarded-Host": "dsc.example.com"}
    forwarded_header = {"Origin": "https://dsc.example.com", "Forwarded": 'for=198.51.100.1;host="dsc.example.com";proto=https'}
    for trusted, expected in (([], 403), (["127.0.0.0/8"], 303)):
        settings = console_settings(tmp_path, model_path, f"sqlite:///{tmp_path / f'proxy-{len(trusted)}.db'}", trusted_proxies=trusted)
        with running_teacher(settings, tf_engine) as teacher:
            for headers in (behind_proxy, forwarded_header):
                response = httpx.post(f"{teacher.url}/console/login", data={"token": ADMIN_TOKEN}, headers=headers, follow_redirects=False)
                assert response.status_code == expected, (trusted, headers, response.text[:200])
