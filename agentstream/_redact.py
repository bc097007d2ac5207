"""Keeping secrets out of logs, reprs and error messages."""

from __future__ import annotations

import re

_QUERY_SECRET = re.compile(
    r"((?:api_key|apikey|token|sessionid|session_id|auth-token|password)=)[^&#\s]+", re.I
)

#: The password of a URL's user info: ``scheme://user:PASSWORD@`` (it may hold ``@``;
#: ``/ ? #`` would have to be percent-encoded).
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/?#@:]*:)[^\s/?#]*@", re.I)


def mask_secret(secret: str) -> str:
    """Show just enough of a secret to tell two apart: ``ak_l…3f9``; short ones become ``***``.

    Example:
        >>> mask_secret("ak_live_0123456789abcdef")
        'ak_l…def'
    """
    if len(secret) < 12:
        return "***"
    return f"{secret[:4]}…{secret[-3:]}"


def mask_url(url: str) -> str:
    """Mask every credential in a URL (or in a text holding URLs): the password of its
    user info (``redis://user:***@host``) and the secrets of its query string.

    Example:
        >>> mask_url("ws://localhost:8000/ws/v1?api_key=ak_live_0123456789abcdef")
        'ws://localhost:8000/ws/v1?api_key=***'
        >>> mask_url("redis://:s3cret@127.0.0.1:6379/0")
        'redis://:***@127.0.0.1:6379/0'
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1***@", url))
