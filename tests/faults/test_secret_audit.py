"""The secret audit of tests/conftest.py finds a key wherever a log record shows it.

The audit runs for the whole suite; these tests prove it can fail. Their deliberate
leaks are collected with ``audit().expected()``, so they fail nothing and do not count
in the figure.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import TYPE_CHECKING, cast

import pytest

from agentstream._redact import mask_secret, mask_url
from agentstream.sim import DEMO_API_KEY
from tests.conftest import AUDIT_ENV, _fail_on_leaks, audit, known_keys, pytest_sessionfinish

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("tests.faults.audit")


def test_known_keys_include_the_demo_key_and_every_test_key() -> None:
    keys = known_keys()
    assert DEMO_API_KEY in keys
    assert "ak_live_wrongwrongwrong" in keys  # tests/client/test_supervisor.py
    assert "ak_live_..." in keys  # the examples' key
    assert not any("…" in k or "*" in k for k in keys)  # masks are no keys


def _leak(how: str, runtime: str) -> None:
    if how == "message":
        log.debug("connecting with %s", DEMO_API_KEY)
    elif how == "args":
        log.debug("key starts with %.3s", DEMO_API_KEY)  # the message shows 3 characters
    elif how == "exception":
        try:
            raise ValueError(f"refused {DEMO_API_KEY}")
        except ValueError:
            log.exception("failed")
    elif how == "suppressed-context":
        try:
            try:
                raise ValueError(f"refused {DEMO_API_KEY}")
            except ValueError:
                raise RuntimeError("wrapped") from None
        except RuntimeError:
            log.error("failed", exc_info=True)
    elif how == "runtime-key":
        log.info("using %s", runtime)
    elif how == "url-password":
        log.warning("redis %s: refused", "redis://bot:s3cr3t-but-not-ak-shaped@127.0.0.1:6379/0")
    else:
        log.warning("GET /ws/v1?api_key=%s", "s3cr3t-but-not-ak-shaped")


@pytest.mark.parametrize(
    ("how", "part"),
    [
        ("message", "message"),
        ("args", "args"),
        ("exception", "exception"),
        ("suppressed-context", "exception"),
        ("runtime-key", "message"),
        ("clear-query", "message"),
        ("url-password", "message"),
    ],
)
def test_a_leak_is_caught_with_its_record(how: str, part: str) -> None:
    runtime = "ak_live_" + secrets.token_hex(16)
    with audit().expected() as found:
        _leak(how, runtime)
    [leak] = found
    assert (leak.logger, leak.part) == ("tests.faults.audit", part)
    assert "test_secret_audit.py:" in leak.source
    for secret in (DEMO_API_KEY, runtime, "s3cr3t-but-not-ak-shaped"):
        assert secret not in str(leak)  # the report is masked


def test_masked_forms_are_not_leaks() -> None:
    runtime = "ak_live_" + secrets.token_hex(16)
    with audit().expected() as found:
        log.info("key %s", mask_secret(runtime))
        log.info("url %s", mask_url(f"ws://h:1/ws/v1?api_key={runtime}"))
        log.info("url %s", mask_url("rediss://bot:s3cr3t-but-not-ak-shaped@127.0.0.1:6379/0"))
        log.info("url %s", "redis://127.0.0.1:6379/0 ws://localhost:8000/ws?x=a@b")
        log.info("demo key %s, short key %s", mask_secret(DEMO_API_KEY), mask_secret("ak_a"))
        log.info("words that start like a short key: peak_ask, ak_alpha, ak_bob_")
    assert found == []


def test_a_leak_fails_the_test_naming_the_record() -> None:
    log.warning("leaking %s", DEMO_API_KEY)
    [leak] = audit().pending
    with pytest.raises(pytest.fail.Exception) as info:
        _fail_on_leaks("during the test")
    audit().leaks.remove(leak)  # deliberate: not part of the suite's figure
    message = str(info.value)
    assert "tests.faults.audit:WARNING at " in message
    assert "test_secret_audit.py:" in message
    assert DEMO_API_KEY not in message
    assert audit().pending == []


def test_caplog_still_captures_at_its_own_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    log.info("below the level")
    log.warning("at the level")
    assert [r.getMessage() for r in caplog.records] == ["at the level"]


def test_the_figure_is_written_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.json"
    monkeypatch.setenv(AUDIT_ENV, str(path))
    log.debug("one more record")
    pytest_sessionfinish(cast("pytest.Session", None), 0)
    figure = json.loads(path.read_text())
    assert set(figure) == {"records_checked", "leaks", "examples"}
    assert figure["records_checked"] == audit().records_checked > 0
    assert figure["leaks"] == len(audit().leaks)
