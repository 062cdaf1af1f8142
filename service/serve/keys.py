"""API keys: random, shown once, stored as sha256 (the rows are :mod:`.store`'s).

A key is 32 random bytes (``secrets.token_urlsafe``), so a plain sha256 is a safe digest: there is nothing to
brute-force that a slow hash would protect. The key itself is never written anywhere by the server.
"""

from __future__ import annotations

import hashlib

KEY_PREFIX = "hdpo-sk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
