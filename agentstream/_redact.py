"""Keeping secrets out of logs, reprs and error messages."""

from __future__ import annotations

import re

_QUERY_SECRET = re.compile(
    r"((?:api_key|apikey|token|sessionid|session_id|auth-token)=)[^&#\s]+", re.I
)


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
    """Mask every credential in a URL's query string.

    Example:
        >>> mask_url("ws://localhost:8000/ws/v1?api_key=ak_live_0123456789abcdef")
        'ws://localhost:8000/ws/v1?api_key=***'
    """
    return _QUERY_SECRET.sub(r"\1***", url)
