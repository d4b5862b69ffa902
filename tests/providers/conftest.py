from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

Handler = Callable[[httpx.Request], httpx.Response]
MockHttp = Callable[[Handler], httpx.AsyncClient]


@pytest.fixture
async def mock_http() -> AsyncIterator[MockHttp]:
    """A factory of httpx clients answered by a handler, all closed after the test."""
    opened: list[httpx.AsyncClient] = []

    def make(handler: Handler) -> httpx.AsyncClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        opened.append(http)
        return http

    yield make
    for http in opened:
        await http.aclose()
