"""Shared fixtures: tests run on anyio's asyncio backend against real local servers."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
