"""The venue seam is general: a toy venue, defined only here, runs on the unchanged core.

The toy venue is unlike AgentExchange in every way the seam offers: a REST session
before every socket (as Tradier), an opening ``hello`` that must be acked before any
subscription (as tastytrade's ``connect``), acks matched by request id, a client
heartbeat carrying a credential read fresh each time (tastytrade), server heartbeats
and no pings (Tradier), a message that ends the session (Tradier's "session not
found"), and no fast decoder. Its server is a small scripted aiohttp application.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import msgspec
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from agentstream._client import StreamClient
from agentstream.channels import Channel
from agentstream.errors import AuthenticationError, StreamConnectionError
from agentstream.protocols.base import (
    Ack,
    AuthFailed,
    BadFrame,
    Data,
    Handshake,
    Heartbeat,
    HttpRequest,
    HttpResponse,
    Inbound,
    Kind,
    Outgoing,
    Reconnect,
    Refused,
    VenueProtocol,
)

from .conftest import running, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

pytestmark = pytest.mark.anyio


class Fill(msgspec.Struct, frozen=True):
    """The toy venue's one event."""

    id: str
    qty: Decimal


class _Frame(msgspec.Struct, frozen=True, omit_defaults=True):
    topic: str | None = None
    fill: msgspec.Raw = msgspec.Raw()
    ack: int | None = None
    nack: int | None = None
    error: str | None = None
    beat: bool = False
    bye: str | None = None
    denied: str | None = None


_frame = msgspec.json.Decoder(_Frame)
_enc = msgspec.json.Encoder()


class ToyProtocol(VenueProtocol):
    venue = "toy"
    kinds: ClassVar[Mapping[str, Kind]] = {"fills": Kind("fills", Fill, private=True)}
    stale_timeout = 1.0
    max_subscriptions = 5
    heartbeat_interval = 0.05

    def __init__(self, rest: str) -> None:
        self.rest = rest
        self.ids = itertools.count(1)
        self.session = ""

    def pre_connect(self, token: str) -> HttpRequest:
        return HttpRequest(
            "POST", f"{self.rest}/session", {"Authorization": f"Bearer {token}"}, secret=token
        )

    def handshake(self, token: str, answer: HttpResponse | None) -> Handshake:
        assert answer is not None
        if answer.status in self.auth_http_statuses:
            raise AuthenticationError(f"session refused (HTTP {answer.status})")
        if answer.status != 200:
            raise StreamConnectionError(f"session request answered HTTP {answer.status}")
        body = msgspec.json.decode(answer.body)
        self.session = body["session"]
        return Handshake(body["url"])

    def open_messages(self, token: str, wanted: list[Channel]) -> list[Outgoing]:
        rid = next(self.ids)
        text = _enc.encode({"op": "hello", "session": self.session, "id": rid}).decode()
        return [Outgoing(text, request_id=rid, await_ack=True)]

    def subscribe_messages(
        self, token: str, add: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        out = []
        for ch in add:
            rid = next(self.ids)
            text = _enc.encode({"op": "sub", "topic": ch.kind, "id": rid}).decode()
            out.append(Outgoing(text, key=ch.key, request_id=rid))
        return out

    def heartbeat_message(self, token: str) -> Outgoing:
        return Outgoing(_enc.encode({"op": "beat", "token": token}).decode())

    def classify(self, frame: str | bytes) -> Inbound:
        try:
            f = _frame.decode(frame)
        except msgspec.DecodeError as exc:
            return BadFrame(str(exc))
        if f.topic is not None and f.fill:
            return Data(f.topic, f.fill)
        if f.ack is not None:
            return Ack(request_id=f.ack)
        if f.nack is not None:
            return Refused(f.error or "nack", request_id=f.nack, effect="invalid")
        if f.beat:
            return Heartbeat()
        if f.bye is not None:
            return Reconnect(f.bye)
        if f.denied is not None:
            return AuthFailed(f.denied, refreshable=True)
        return BadFrame("no shape of the toy protocol")


class ToyClient(StreamClient):
    """What a venue's thin client class is: its protocol and its decorators."""

    def __init__(self, rest: str, token: Any, **options: Any) -> None:
        super().__init__(ToyProtocol(rest), token, **options)

    def on_fill(self, handler: Callable[..., Any]) -> Any:
        return self._register(Channel.of(self._kinds["fills"]), handler, thread=False)


@dataclass
class ToyServer:
    """The toy venue's server: sessions over REST, then a socket per session."""

    session_statuses: list[int] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    #: Per socket: every message the client sent, decoded.
    sockets: list[list[dict[str, Any]]] = field(default_factory=list)
    fills: int = 0
    early_subs: int = 0
    #: How the server answers the hello: ack it, refuse it, or never answer.
    hello: str = "ack"
    #: Answer the first socket's first subscription with a refreshable refusal.
    deny_first: bool = False
    denied: int = 0
    bye_after: int | None = None
    url: str = ""

    async def session(self, request: web.Request) -> web.Response:
        if self.session_statuses:
            status = self.session_statuses.pop(0)
            if status != 200:
                return web.Response(status=status, text="no")
        assert request.headers["Authorization"].startswith("Bearer tok")
        sid = f"s{len(self.sessions) + 1}"
        self.sessions.append(sid)
        return web.json_response({"url": f"{self.url}/ws?session={sid}", "session": sid})

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        got: list[dict[str, Any]] = []
        self.sockets.append(got)
        hello = False
        sent = 0
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                nonlocal sent
                while True:
                    await anyio.sleep(0.02)
                    if self.hello == "none":
                        # Alive, but never answering the hello: only the opening's own
                        # bound can end this socket (not the stale watchdog).
                        await ws.send_str('{"beat":true}')
                    if hello and any(m.get("op") == "sub" for m in got):
                        self.fills += 1
                        sent += 1
                        fill = {"id": f"f{self.fills}", "qty": "1.5"}
                        await ws.send_str(_enc.encode({"topic": "fills", "fill": fill}).decode())
                        await ws.send_str('{"beat":true}')
                        if self.bye_after is not None and sent == self.bye_after:
                            await ws.send_str('{"bye":"session not found"}')
                            await ws.close()
                            return

            tg.start_soon(stream)
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                m = msgspec.json.decode(msg.data)
                got.append(m)
                if m.get("op") == "hello":
                    assert m["session"] == request.query["session"]

                    async def ack_later(rid: int) -> None:
                        # Late, from another task: a subscription sent before this ack
                        # arrives meanwhile and is refused.
                        nonlocal hello
                        await anyio.sleep(0.05)
                        if self.hello == "ack":
                            hello = True
                            await ws.send_str(_enc.encode({"ack": rid}).decode())
                        elif self.hello == "nack":
                            nack = {"nack": rid, "error": "no such session"}
                            await ws.send_str(_enc.encode(nack).decode())

                    tg.start_soon(ack_later, m["id"])
                elif m.get("op") == "sub":
                    if not hello:  # a subscription before the hello's ack: a client bug
                        self.early_subs += 1
                        await ws.send_str(
                            _enc.encode({"nack": m["id"], "error": "hello first"}).decode()
                        )
                    elif self.deny_first and not self.denied:
                        self.denied += 1
                        await ws.send_str('{"denied":"token expired"}')
                    else:
                        await ws.send_str(_enc.encode({"ack": m["id"]}).decode())
            tg.cancel_scope.cancel()
        return ws


@pytest.fixture
async def toy() -> AsyncIterator[ToyServer]:
    server = ToyServer()
    app = web.Application()
    app.router.add_post("/session", server.session)
    app.router.add_get("/ws", server.socket)
    async with TestServer(app, host="127.0.0.1") as ts:
        server.url = f"ws://127.0.0.1:{ts.port}"
        yield server


FAST = {"backoff_initial": 0.02, "backoff_max": 0.1, "backoff_jitter": 0.0, "close_timeout": 0.2}


def _rest(toy: ToyServer) -> str:
    return toy.url.replace("ws://", "http://")


async def test_toy_venue_streams_on_the_core(toy: ToyServer) -> None:
    tokens = itertools.count(1)
    ws = ToyClient(_rest(toy), lambda: f"tok{next(tokens)}", **FAST)
    plain: list[dict[str, Any]] = []
    typed: list[Fill] = []

    def on_typed(f: Fill) -> None:
        typed.append(f)

    ws.on_fill(plain.append)
    ws.on_fill(on_typed)
    async with running(ws):
        await wait_for(lambda: len(typed) >= 5 and len(plain) >= 5)
        await wait_for(lambda: sum(m.get("op") == "beat" for m in toy.sockets[0]) >= 3)
        stats = ws.stats
    [sent] = toy.sockets
    # The hello first, the subscription only after its ack, then heartbeats.
    assert [m["op"] for m in sent[:2]] == ["hello", "sub"]
    assert toy.early_subs == 0
    assert sent[0]["session"] == "s1"
    beats = [m["token"] for m in sent if m.get("op") == "beat"]
    assert len(set(beats)) == len(beats)  # a fresh credential in every heartbeat
    assert typed[0] == Fill("f1", Decimal("1.5"))
    assert plain[0] == {"id": "f1", "qty": "1.5"}
    assert stats.heartbeats >= 5
    assert stats.server_errors == 0
    assert stats.dropped_frames == 0
    assert stats.messages["fills"] >= 5


async def test_a_session_that_ends_gets_a_fresh_one(toy: ToyServer) -> None:
    toy.bye_after = 3
    ws = ToyClient(_rest(toy), "tok-fixed", **FAST)
    got: list[dict[str, Any]] = []
    reasons: list[str] = []
    ws.on_fill(got.append)
    ws.on_disconnect(reasons.append)
    async with running(ws):
        await wait_for(lambda: len(toy.sessions) >= 3 and len(got) >= 7)
    assert toy.sessions[:3] == ["s1", "s2", "s3"]  # a new session before every socket
    assert reasons[0] == "session not found"
    assert ws.error is None


async def test_a_refused_session_is_fatal_after_one_request(toy: ToyServer) -> None:
    toy.session_statuses = [401, 200]
    ws = ToyClient(_rest(toy), "tok-secret-0123456789", **FAST)
    ws.on_fill(lambda d: None)
    with pytest.raises(AuthenticationError) as info:
        await ws.connect()
    assert toy.session_statuses == [200]  # exactly one request was made
    assert "tok-secret-0123456789" not in str(info.value)
    assert "tok-secret-0123456789" not in repr(ws)


async def test_a_failing_session_request_is_retried(toy: ToyServer) -> None:
    toy.session_statuses = [503, 502]
    ws = ToyClient(_rest(toy), "tok", **FAST)
    got: list[dict[str, Any]] = []
    ws.on_fill(got.append)
    async with running(ws):
        await wait_for(lambda: len(got) >= 2)
    assert ws.stats.failed_attempts == 2
    assert toy.sessions == ["s1"]


async def test_a_credential_callable_failing_midway_is_fatal_with_its_cause(
    toy: ToyServer,
) -> None:
    calls = itertools.count()

    def token() -> str:
        # The 1st call opens the session; a later one (a heartbeat's) fails.
        if next(calls) >= 3:
            raise OSError("the vault is down")
        return "tok-ok"

    ws = ToyClient(_rest(toy), token, **FAST)
    ws.on_fill(lambda d: None)
    with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
        await ws.connect()  # the error, not an exception group around it
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("hello", ["none", "nack"])
async def test_an_opening_message_unanswered_or_refused_costs_the_socket(
    toy: ToyServer, hello: str
) -> None:
    toy.hello = hello
    ws = ToyClient(_rest(toy), "tok", stale_timeout=0.3, **FAST)
    reasons: list[str] = []
    ws.on_disconnect(reasons.append)
    ws.on_fill(lambda d: None)
    async with running(ws):
        await wait_for(lambda: len(reasons) >= 2, what="two sockets given up")
        toy.hello = "ack"
        await wait_for(lambda: toy.fills >= 2, what="a socket that opens")
    want = (
        "no answer to the opening message"
        if hello == "none"
        else "opening refused: no such session"
    )
    assert reasons[0] == want
    assert toy.early_subs == 0  # nothing was sent before the opening was acked


@pytest.mark.parametrize("callable_token", [True, False], ids=["callable", "fixed"])
async def test_a_refreshable_refusal_gets_one_fresh_credential(
    toy: ToyServer, callable_token: bool
) -> None:
    toy.deny_first = True
    tokens = itertools.count(1)
    cred: Any = (lambda: f"tok{next(tokens)}") if callable_token else "tok-fixed"
    ws = ToyClient(_rest(toy), cred, **FAST)
    reasons: list[str] = []
    got: list[dict[str, Any]] = []
    ws.on_disconnect(reasons.append)
    ws.on_fill(got.append)
    if not callable_token:
        # A fixed credential cannot be refreshed: refused is final, at once.
        with anyio.fail_after(5), pytest.raises(AuthenticationError):
            await ws.connect()
        assert len(toy.sessions) == 1
        return
    async with running(ws):
        await wait_for(lambda: len(got) >= 2)
    assert reasons == ["credentials refused (token expired)"]
    assert len(toy.sessions) == 2
