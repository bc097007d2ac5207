"""Shared fixtures: tests run on anyio's asyncio backend against real local servers.

Also the secret audit of the whole suite: every log record of every logger, at DEBUG,
is searched for API keys (the sim's demo key, every ``ak_...`` key the tests and
examples use, any unmasked ``ak_live_`` / ``ak_test_`` key, any unmasked ``api_key=``
query) and for URLs with a password in clear (``redis://:pw@host``). A test during
which a key leaks fails, naming the record. With
``AGENTSTREAM_SECRET_AUDIT=<path>`` the totals are written there as JSON at the end:
``{"records_checked": N, "leaks": K, "examples": [...]}`` (examples are masked).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agentstream.sim import DEMO_API_KEY

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Iterator

#: pytester runs test files as a user would (tests/plugin); pytest takes pytest_plugins
#: only from a top-level conftest.
pytest_plugins = ["pytester"]

AUDIT_ENV = "AGENTSTREAM_SECRET_AUDIT"
_ROOT = Path(__file__).resolve().parents[1]
#: String literals that are API keys in the tests and examples (masks contain "…").
_KEY_LITERAL = re.compile(r"""["'](ak_[^"'\s…*]+)["']""")
#: Keys made at run time: a live or test key that is not masked (a mask keeps 4 chars).
_RUNTIME_KEY = r"\bak_(?:live|test)_[A-Za-z0-9]{8,}"
#: A URL with its key in clear (mask_url turns the value into ``***``).
_CLEAR_QUERY = r"\bapi_?key=(?!\*\*\*)[^\s&#'\"<>]+"
#: A URL with a password in its user info (``redis://:pw@host``; mask_url: ``:***@``).
_CLEAR_USERINFO = r"\b[a-z][a-z0-9+.-]*://[^\s/?#@:'\"<>]*:(?!\*\*\*@)[^\s/?#'\"<>]+@"


def known_keys(root: Path = _ROOT) -> set[str]:
    """The demo key and every ``ak_...`` string literal in tests/ and examples/."""
    keys = {DEMO_API_KEY}
    for folder in ("tests", "examples"):
        for path in (root / folder).rglob("*.py"):
            keys.update(_KEY_LITERAL.findall(path.read_text(encoding="utf-8")))
    return keys


def secret_pattern(keys: Iterable[str]) -> re.Pattern[str]:
    """One regex for every secret: known keys as whole tokens, plus the generic shapes."""
    literal = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(
        rf"(?<![\w])(?:{literal})(?![\w])|{_RUNTIME_KEY}|{_CLEAR_QUERY}|{_CLEAR_USERINFO}"
    )


@dataclass(frozen=True)
class Leak:
    """One log record that showed a secret; ``snippet`` has every secret masked."""

    logger: str
    level: str
    source: str
    part: str
    snippet: str

    def __str__(self) -> str:
        return f"{self.logger}:{self.level} at {self.source} ({self.part}): {self.snippet}"


def _exception_texts(exc: BaseException) -> Iterator[str]:
    """The traceback as printed, and str/args of every chained exception (suppressed too)."""
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield str(e)
        yield repr(e.args)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)


class SecretAudit(logging.Handler):
    """A root handler that searches each record's message, args and exception for secrets."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__(logging.DEBUG)
        self.pattern = pattern
        self.records_checked = 0
        #: Every leak of the session (for the JSON figure).
        self.leaks: list[Leak] = []
        #: Leaks not yet reported to a test.
        self.pending: list[Leak] = []
        self._expected: list[Leak] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records_checked += 1
        for part, text in self._texts(record):
            match = self.pattern.search(text)
            if match is not None:
                leak = Leak(
                    record.name,
                    record.levelname,
                    f"{record.pathname}:{record.lineno}",
                    part,
                    self.mask(text[max(0, match.start() - 80) : match.end() + 40]),
                )
                if self._expected is not None:
                    self._expected.append(leak)
                else:
                    self.leaks.append(leak)
                    self.pending.append(leak)
                return

    def _texts(self, record: logging.LogRecord) -> Iterator[tuple[str, str]]:
        try:
            yield "message", record.getMessage()
        except Exception:  # a record whose args do not fit its format
            yield "message", str(record.msg)
        if record.args:
            yield "args", repr(record.args)
        if record.exc_info and record.exc_info[1] is not None:
            for text in _exception_texts(record.exc_info[1]):
                yield "exception", text
        if record.exc_text:
            yield "exception", record.exc_text
        if record.stack_info:
            yield "stack", record.stack_info

    def mask(self, text: str) -> str:
        return self.pattern.sub(lambda m: f"<secret {m.group()[:4]}…>", text).replace("\n", " ")

    @contextlib.contextmanager
    def expected(self) -> Iterator[list[Leak]]:
        """For tests of the audit: collect the leaks of the block instead of failing on them."""
        found: list[Leak] = []
        self._expected = found
        try:
            yield found
        finally:
            self._expected = None

    def take(self) -> list[Leak]:
        """The leaks since the last call (and forget them)."""
        out, self.pending = self.pending, []
        return out


_audit: SecretAudit | None = None
_saved_levels: list[tuple[logging.Logger, int]] = []


def audit() -> SecretAudit:
    """The session's audit handler (tests of the audit itself use it)."""
    assert _audit is not None, "the secret audit is not installed"
    return _audit


def pytest_configure(config: pytest.Config) -> None:
    global _audit
    _audit = SecretAudit(secret_pattern(known_keys()))
    root = logging.getLogger()
    root.addHandler(_audit)
    for logger in (root, logging.getLogger("agentstream")):
        _saved_levels.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _audit
    if _audit is not None:
        logging.getLogger().removeHandler(_audit)
        _audit = None
    for logger, level in _saved_levels:
        logger.setLevel(level)
    _saved_levels.clear()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(AUDIT_ENV)
    if _audit is None or not path:
        return
    figure = {
        "records_checked": _audit.records_checked,
        "leaks": len(_audit.leaks),
        "examples": [str(leak) for leak in _audit.leaks[:20]],
    }
    Path(path).write_text(json.dumps(figure, indent=2) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _audit is not None:
        terminalreporter.write_line(
            f"secret audit: {_audit.records_checked} log records checked, "
            f"{len(_audit.leaks)} leaked an API key"
        )


def _fail_on_leaks(when: str) -> None:
    leaks = audit().take()
    if leaks:
        listing = "\n".join(f"  {leak}" for leak in leaks)
        pytest.fail(f"an API key leaked into {len(leaks)} log record(s) {when}:\n{listing}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield  # a test that failed anyway keeps its own error; teardown reports leaks
    _fail_on_leaks("during the test")
    return result


@pytest.fixture(autouse=True)
def _secret_audit() -> Iterator[None]:
    """Fail a test whose setup or teardown (or earlier wider fixtures) leaked a key."""
    _fail_on_leaks("before the test (in a wider fixture)")
    yield
    _fail_on_leaks("in the test's fixtures")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
