"""Bearer keys as digests: settings hold `sha256:<hex>` of each key, never the key itself.

An operator may configure a key in plain text (it is hashed when the settings load) or as its
digest, so the plain key need not be in the environment at all. A presented token is always
hashed before it is compared, so knowing a digest does not open anything.
"""

from __future__ import annotations

import hashlib
import re

DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY_ID_CHARS = 16  # of the digest's hex: names a key in the database and the logs (64 bits, no key material)
# How jobs of no key (dsc sample, a teacher without keys) are named where an
# owner is shown or chosen: /metrics labels, job views, a distillation's `owners`.
NO_OWNER = "none"
OWNER_PATTERN = rf"^([0-9a-f]{{{KEY_ID_CHARS}}}|{NO_OWNER})$"


def hash_key(token: str) -> str:
    """`sha256:<hex>` of a presented or configured plain key."""
    return DIGEST_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def configured_digest(value: str) -> str:
    """A configured key as its digest: `sha256:<64 hex>` is taken as given, anything else is a plain key."""
    value = value.strip()
    lowered = value.lower()
    return lowered if _DIGEST.match(lowered) else hash_key(value)


def key_id(digest: str) -> str:
    """A short, stable name of a key (the start of its digest): what jobs store as their owner."""
    return digest.removeprefix(DIGEST_PREFIX)[:KEY_ID_CHARS]


def owner_name(owner: str | None) -> str:
    """A job's owner as shown: its key id, or NO_OWNER."""
    return owner or NO_OWNER
