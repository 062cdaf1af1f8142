"""Signing in to the console: an API key is exchanged once for a session cookie.

The key itself never leaves the sign-in request: the cookie holds ``key_id.expiry.mac`` (an HMAC-SHA256 with a
secret kept in ``DATA/console.secret``, created 0600 on first use and shared by every replica on the same data
folder). The cookie is HttpOnly (no script can read it), SameSite=Strict (no other site's page sends it) and
Secure when the page came over HTTPS. Each request checks the MAC, the expiry and that the key is not revoked,
so ``hdpo-tune serve keys revoke`` signs its sessions out too.

Requests that change something (sign in, upload, create, cancel) must also carry ``X-HDPO-Console: 1`` and,
when the browser sends one, an ``Origin`` equal to the page's own: a cross-site form cannot set a custom
header, and a cross-site script that tries needs a CORS pre-flight this server never grants.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Literal, TypedDict

from starlette.requests import Request

COOKIE = "hdpo_console"
CSRF_HEADER = "x-hdpo-console"
LIFETIME_S = 12 * 3600
SECRET_FILE = "console.secret"


def load_secret(data_dir: Path) -> bytes:
    """The signing secret (32 random bytes), created atomically on first use."""
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def _mac(secret: bytes, key_id: str, expiry: int) -> str:
    return hmac.new(secret, f"{key_id}.{expiry}".encode(), hashlib.sha256).hexdigest()


def make_token(secret: bytes, key_id: str, now: float | None = None) -> str:
    expiry = int(now if now is not None else time.time()) + LIFETIME_S
    return f"{key_id}.{expiry}.{_mac(secret, key_id, expiry)}"


def read_token(secret: bytes, token: str | None, now: float | None = None) -> str | None:
    """The key id a valid, unexpired token was made for, else None."""
    parts = (token or "").split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    key_id, expiry, mac = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(mac, _mac(secret, key_id, expiry)):
        return None
    return key_id if expiry > (now if now is not None else time.time()) else None


def cross_site(request: Request) -> str | None:
    """Why a state-changing request is refused (missing header, foreign Origin), or None when it may proceed."""
    if request.headers.get(CSRF_HEADER) != "1":
        return f"missing the {CSRF_HEADER} header: state-changing console requests come from the console's pages"
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin is not None and origin.split("://", 1)[-1] != host:
        return "request from another origin refused"
    return None


class CookieArgs(TypedDict):
    httponly: bool
    samesite: Literal["strict"]
    secure: bool
    path: str


def cookie_args(request: Request) -> CookieArgs:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https", "path": "/"}
