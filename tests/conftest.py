from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import RedisProcess, run_redis


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    """One real redis-server for the session; tests use their own key prefix or flush."""
    with run_redis() as server:
        yield server
