"""tastytrade's protocol object, fed frames: no event loop, no socket."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from agentstream.errors import ConfigurationError
from agentstream.protocols.base import Ack, AuthFailed, BadFrame, Batch, Data, Noise, Refused
from agentstream.protocols.tastytrade import LIVE_URL, SANDBOX_URL, TastytradeProtocol

if TYPE_CHECKING:
    from agentstream.channels import Channel


def _proto() -> TastytradeProtocol:
    return TastytradeProtocol("ws://127.0.0.1:8000/tastytrade")


def _ch(proto: TastytradeProtocol, key: str) -> Channel:
    return proto.channel_for(key)


def test_urls() -> None:
    assert LIVE_URL == "wss://streamer.tastyworks.com"
    assert SANDBOX_URL == "wss://streamer.cert.tastyworks.com"
    with pytest.raises(ConfigurationError):
        TastytradeProtocol("https://streamer.tastyworks.com")
    with pytest.raises(ConfigurationError):
        TastytradeProtocol(LIVE_URL, heartbeat_interval=0)


def test_connect_comes_first_with_the_accounts_and_the_token() -> None:
    proto = _proto()
    wanted = [_ch(proto, "account:5WT00000"), _ch(proto, "account:5WT00001"), _ch(proto, "orders")]
    [out] = proto.open_messages("Bearer abc", wanted)
    msg = msgspec.json.decode(out.text)
    assert msg == {
        "auth-token": "Bearer abc",
        "action": "connect",
        "value": ["5WT00000", "5WT00001"],
        "request-id": out.request_id,
    }
    assert out.await_ack
    assert out.covers == ("account:5WT00000", "account:5WT00001")


def test_subscriptions_after_connect() -> None:
    proto = _proto()
    wl, qa, orders = (_ch(proto, k) for k in ("watchlists", "quote_alerts", "orders"))
    outs = proto.subscribe_messages("Bearer t", [wl, qa, orders], [wl, qa, orders])
    actions = [msgspec.json.decode(o.text)["action"] for o in outs]
    assert actions == ["public-watchlists-subscribe", "quote-alerts-subscribe"]
    assert [o.key for o in outs] == ["watchlists", "quote_alerts"]
    assert len({o.request_id for o in outs}) == 2
    # A new account later: connect again with every account.
    acct = [_ch(proto, "account:5WT00000"), _ch(proto, "account:5WT00009")]
    [out] = proto.subscribe_messages("Bearer t", acct[1:], acct)
    msg = msgspec.json.decode(out.text)
    assert (msg["action"], msg["value"]) == ("connect", ["5WT00000", "5WT00009"])


def test_heartbeats_carry_the_token_they_are_given() -> None:
    proto = _proto()
    a = msgspec.json.decode(proto.heartbeat_message("Bearer one").text)
    b = msgspec.json.decode(proto.heartbeat_message("Bearer two").text)
    assert (a["action"], a["auth-token"], b["auth-token"]) == (
        "heartbeat",
        "Bearer one",
        "Bearer two",
    )


ORDER = {
    "account-number": "5WT00000",
    "status": "Filled",
    "underlying-symbol": "AAPL",
}


def test_classify() -> None:
    proto = _proto()
    assert proto.classify(
        b'{"status":"ok","action":"connect","web-socket-session-id":"x","value":["5WT00000"],'
        b'"request-id":1}'
    ) == Ack(request_id=1)
    assert proto.classify(
        b'{"status":"error","action":"connect","web-socket-session-id":"x","message":"failed"}'
    ) == AuthFailed("connect failed", refreshable=True)
    assert proto.classify(
        b'{"status":"error","action":"quote-alerts-subscribe","message":"connect-not-completed",'
        b'"request-id":4}'
    ) == Refused("connect-not-completed", "answer to quote-alerts-subscribe", request_id=4)
    got = proto.classify(msgspec.json.encode({"type": "Order", "data": ORDER, "timestamp": 1}))
    assert isinstance(got, Data)
    assert got.kind == "orders"
    assert msgspec.json.decode(got.payload) == ORDER
    assert proto.classify(b'{"type":"TradingStatus","data":{}}') == Noise("TradingStatus")
    assert isinstance(proto.classify(b'{"type":"Order"}'), BadFrame)
    assert isinstance(proto.classify(b"nope"), BadFrame)
    assert isinstance(proto.classify(b'{"hello":1}'), BadFrame)


def test_batches_are_unwrapped() -> None:
    proto = _proto()
    frame = msgspec.json.encode(
        {
            "results": [
                {"type": "Order", "data": ORDER, "timestamp": 1},
                {"type": "AccountBalance", "data": {"account-number": "5WT00000"}},
                {"type": "Unknown", "data": {}},
                [1, 2],
            ]
        }
    )
    got = proto.classify(frame)
    assert isinstance(got, Batch)
    kinds = [type(i).__name__ for i in got.items]
    assert kinds == ["Data", "Data", "Noise", "BadFrame"]
    assert [i.kind for i in got.items if isinstance(i, Data)] == ["orders", "balances"]
