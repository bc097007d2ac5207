"""Tradier's protocol object, fed frames and answers: no event loop, no socket."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from agentstream.channels import Channel
from agentstream.errors import AuthenticationError, ConfigurationError, StreamConnectionError
from agentstream.protocols.base import (
    BadFrame,
    Data,
    Heartbeat,
    HttpResponse,
    Noise,
    Reconnect,
    Refused,
)
from agentstream.protocols.tradier import LIVE_URL, SANDBOX_URL, TradierProtocol
from agentstream.tradier import TradierOrder

SEED_FILLED = (
    b'{"id":1107075,"event":"order","status":"filled","type":"limit","price":10.0,'
    b'"stop_price":0.0,"avg_fill_price":10.0,"exec_quantity":2.0,"last_fill_quantity":0.0,'
    b'"remaining_quantity":0.0,"transaction_date":"2025-12-09T12:05:35.277Z",'
    b'"create_date":"2025-12-09T12:05:35.277Z","account":"6YA"}'
)
HEARTBEAT = b'{"event":"heartbeat","status":"active","timestamp":"2025-12-09T18:03:51.029067177Z"}'


def _proto(**kw: object) -> TradierProtocol:
    return TradierProtocol("http://127.0.0.1:8000/", **kw)  # type: ignore[arg-type]


def test_hosts() -> None:
    assert LIVE_URL == "https://api.tradier.com"
    assert SANDBOX_URL == "https://sandbox.tradier.com"


def test_a_session_request_before_every_socket() -> None:
    req = _proto().pre_connect("tok123")
    assert (req.method, req.url) == ("POST", "http://127.0.0.1:8000/v1/accounts/events/session")
    assert req.headers == {"Authorization": "Bearer tok123", "Accept": "application/json"}
    assert req.secret == "tok123"  # masked wherever the request shows up


def test_the_socket_is_the_one_the_answer_gives_and_the_payload_carries_its_session() -> None:
    proto = _proto(exclude_accounts=["6YB"])
    body = b'{"stream":{"url":"wss://ws.tradier.com/v1/accounts/events","sessionid":"S-1"}}'
    hs = proto.handshake("tok", HttpResponse(200, body))
    assert hs.url == "wss://ws.tradier.com/v1/accounts/events"
    [out] = proto.subscribe_messages("tok", [Channel.parse("orders", proto.kinds)], [])
    assert msgspec.json.decode(out.text) == {
        "events": ["order"],
        "sessionid": "S-1",
        "excludeAccounts": ["6YB"],
    }
    # The next socket's session replaces it: never reused.
    body2 = b'{"stream":{"url":"wss://ws.tradier.com/v1/accounts/events","sessionid":"S-2"}}'
    proto.handshake("tok", HttpResponse(200, body2))
    [out] = proto.subscribe_messages("tok", [], [])
    assert msgspec.json.decode(out.text)["sessionid"] == "S-2"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_an_authentication_error(status: int) -> None:
    with pytest.raises(AuthenticationError) as info:
        _proto().handshake("tok-secret", HttpResponse(status, b"Invalid Access Token"))
    assert info.value.status == status
    assert "tok-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [(500, b""), (503, b"busy"), (200, b"<xml/>"), (200, b'{"stream":null}'), (200, b"{}")],
)
def test_other_failed_answers_are_retried(status: int, body: bytes) -> None:
    with pytest.raises(StreamConnectionError):
        _proto().handshake("tok", HttpResponse(status, body))


def test_classify() -> None:
    proto = _proto()
    got = proto.classify(SEED_FILLED)
    assert isinstance(got, Data)
    assert got.kind == "orders"
    assert bytes(got.payload) == SEED_FILLED
    assert proto.classify(HEARTBEAT) == Heartbeat()
    assert proto.classify(HEARTBEAT.decode()) == Heartbeat()
    assert proto.classify(b'{"error":"session not found"}') == Reconnect("session not found")
    assert proto.classify(b'{"error":"something else"}') == Refused(
        "something else", "something else"
    )
    assert proto.classify(b'{"event":"quote"}') == Noise("quote")
    assert isinstance(proto.classify(b"not json"), BadFrame)
    assert isinstance(proto.classify(b'{"status":"active"}'), BadFrame)
    assert isinstance(proto.classify(b"[1]"), BadFrame)


def test_the_seed_event_decodes_exactly() -> None:
    o = msgspec.json.decode(SEED_FILLED, type=TradierOrder)
    assert (o.id, o.status, o.type, o.account) == (1107075, "filled", "limit", "6YA")
    assert o.exec_quantity == Decimal("2.0")
    assert o.avg_fill_price == Decimal("10.0")
    assert o.transaction_date == datetime(2025, 12, 9, 12, 5, 35, 277000, tzinfo=UTC)
    assert (o.symbol, o.side, o.quantity) == (None, None, None)


def test_json_numbers_become_decimals_from_their_text() -> None:
    o = msgspec.json.decode(
        b'{"id":1,"status":"open","price":0.1,"exec_quantity":0.30000000000000004}',
        type=TradierOrder,
    )
    assert o.price == Decimal("0.1")  # never through a float
    assert o.exec_quantity == Decimal("0.30000000000000004")


@pytest.mark.parametrize(
    "bad",
    [b'{"id":1,"status":"open","price":-1}', b'{"id":"x","status":"open"}', b'{"status":"open"}'],
)
def test_invalid_orders_are_refused(bad: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(bad, type=TradierOrder)


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError):
        TradierProtocol("ws://127.0.0.1:8000")
    with pytest.raises(ConfigurationError):
        TradierProtocol("http://h", exclude_accounts="6YA")


def test_a_404_on_the_session_request_points_at_base_url() -> None:
    with pytest.raises(StreamConnectionError, match="check base_url"):
        _proto().handshake("tok", HttpResponse(404, b"Not Found"))
