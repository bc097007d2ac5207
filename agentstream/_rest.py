"""The shared base of the venues' REST clients: one transport, errors mapped once.

A REST client opens its own :class:`~agentstream.transport.Transport` on first use (so
it works with or without a stream) and closes it with :meth:`RestClient.aclose` or
``async with``. The credential is read fresh for every request (a callable may refresh
it) and masked in every error.
"""

from __future__ import annotations

import asyncio
import inspect
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import msgspec

from agentstream.errors import AuthenticationError, ConfigurationError, RestError
from agentstream.protocols.base import HttpRequest
from agentstream.transport import Transport

if TYPE_CHECKING:
    import ssl as _ssl
    from collections.abc import Mapping
    from types import TracebackType
    from typing import Self

    from agentstream._client import Credential

__all__ = ["RestClient", "amount_text", "decode_answer", "order_id_int"]

T = TypeVar("T")

_decode = msgspec.json.Decoder().decode
#: One decoder per answer type, built on first use.
_answer_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


class _Error(msgspec.Struct):
    """The error bodies venues answer with, whichever fields they use."""

    error: Any = None
    errors: Any = None
    code: str | None = None
    message: str | None = None
    detail: Any = None


_error = msgspec.json.Decoder(_Error)


class RestClient:
    """What every venue's REST client shares (subclass it per venue).

    Args:
        base_url: the REST root (``http(s)://host[:port]``).
        credential: the API key or token, or a sync or async callable returning it.
        timeout: seconds a request may take.
        ssl: an ``ssl.SSLContext`` for ``https://`` (default: the system's trust store).
    """

    def __init__(
        self,
        base_url: str,
        credential: Credential,
        *,
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        base_url = base_url.strip().rstrip("/")
        if base_url.startswith("ws://"):
            base_url = "http://" + base_url[5:]
        elif base_url.startswith("wss://"):
            base_url = "https://" + base_url[6:]
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"a REST base URL must be http(s)://..., got {base_url!r}")
        if not callable(credential) and not (isinstance(credential, str) and credential.strip()):
            raise ConfigurationError("the credential must be a non-empty string or a callable")
        self.base_url = base_url
        self.__credential = credential
        self._timeout = timeout
        self._ssl = ssl
        self._transport: Transport | None = None
        #: The event loop the connections were opened on (they belong to it).
        self._opened_on: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connections (it opens new ones if used again)."""
        transport, self._transport = self._transport, None
        self._opened_on = None
        if transport is not None:
            await transport.__aexit__(None, None, None)

    async def aclose_on_this_loop(self) -> None:
        """Close the connections if they were opened on the running event loop (a
        stream closes its REST client this way when its run ends; connections opened
        from another thread's loop are that thread's to close)."""
        if self._transport is not None and self._opened_on is asyncio.get_running_loop():
            await self.aclose()

    async def _token(self) -> str:
        cred = self.__credential
        if isinstance(cred, str):
            return cred
        value = cred()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value.strip():
            raise AuthenticationError("the credential callable returned no credential")
        return value

    def _headers(self, token: str) -> dict[str, str]:
        """The venue's auth (and accept) headers for ``token``."""
        raise NotImplementedError

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty body), or with
        ``raw`` the body undecoded (bytes, for a venue that decodes amounts itself).

        Raises:
            AuthenticationError: the credential was refused (401/403).
            RestError: any other error status.
            StreamConnectionError: the request could not be made (refused, timed out).
        """
        if self._transport is None:
            transport = Transport(
                ssl=self._ssl,
                connect_timeout=self._timeout,
                close_timeout=1.0,
                max_message_size=1 << 20,
            )
            await transport.__aenter__()
            self._transport = transport
            self._opened_on = asyncio.get_running_loop()
        token = await self._token()
        url = self.base_url + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        answer = await self._transport.request(
            HttpRequest(method, url, self._headers(token), form=form, json=json, secret=token),
            timeout=self._timeout,
        )
        where = f"{method} {path}"
        if answer.status in (401, 403):
            raise AuthenticationError(
                f"{where}: the credentials were refused (HTTP {answer.status})",
                status=answer.status,
            )
        if answer.status >= 400:
            code, detail = _describe(answer.body)
            raise RestError(
                f"{where} answered HTTP {answer.status}"
                + (f" {code}" if code else "")
                + (f": {detail}" if detail else ""),
                status=answer.status,
                code=code,
                detail=detail,
            )
        if raw:
            return answer.body
        if not answer.body.strip():
            return None
        try:
            return _decode(answer.body)
        except msgspec.DecodeError as exc:
            raise RestError(
                f"{where}: the answer is not JSON ({exc})", status=answer.status
            ) from None


def amount_text(name: str, value: object) -> str:
    """An amount as request text: a Decimal in plain notation, an int or a str as given
    (a float is refused: it may not be the number its digits show).

    Raises:
        ConfigurationError: anything else, or a non-finite Decimal.
    """
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ConfigurationError(f"{name} must be finite, got {value}")
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigurationError(
        f"{name} must be a Decimal, int or str (e.g. '187.45'), not {type(value).__name__}"
    )


def order_id_int(order_id: object) -> int:
    """An integer order id (Tradier's, tastytrade's).

    Raises:
        ConfigurationError: not an int.
    """
    if isinstance(order_id, bool) or not isinstance(order_id, int):
        raise ConfigurationError(f"order_id must be an int, not {type(order_id).__name__}")
    return order_id


def decode_answer(body: bytes, into: type[T], where: str, status: int = 200) -> T:
    """``body`` as ``into``; RestError (with any error the body carries) if not."""
    decoder = _answer_decoders.get(into)
    if decoder is None:
        decoder = _answer_decoders[into] = msgspec.json.Decoder(into)
    try:
        value: T = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        _, said = _describe(body)
        raise RestError(
            f"{where}: an answer the client does not understand ({exc})"
            + (f": {said}" if said else ""),
            status=status,
            detail=said,
        ) from None
    return value


def _describe(body: bytes) -> tuple[str, str]:
    """(code, message) from an error body, whatever its shape (JSON or text)."""
    try:
        e = _error.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", body.decode(errors="replace").strip()[:300]
    inner = e.error if isinstance(e.error, dict) else {}
    code = e.code or inner.get("code") or ""
    message = e.message or inner.get("message") or ""
    if not message and isinstance(e.error, str):
        message = e.error
    if not message and isinstance(e.errors, dict):  # Tradier: {"errors": {"error": [...]}}
        msgs = e.errors.get("error")
        message = "; ".join(msgs) if isinstance(msgs, list) else str(msgs or "")
    if not message and e.detail is not None:  # FastAPI validation errors
        message = str(e.detail)
    return str(code), str(message)[:300]
