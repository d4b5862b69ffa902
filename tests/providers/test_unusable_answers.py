"""ProviderClient.request on real connections (httpx on aiohttp, as in production): an answer
that is not HTTP and a URL that cannot be requested are provider errors with a reason, never
a library's exception that no workflow catches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from receiver.errors import Rejected, Unavailable
from receiver.providers.base import ProviderClient, open_http
from receiver.providers.decodo import DecodoClient
from receiver.providers.firecrawl import FirecrawlClient
from receiver.settings import Settings

pytestmark = pytest.mark.anyio

# Answers no HTTP parser takes, each as a server would send it.
NOT_HTTP = {
    "content_length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "header_byte": b"HTTP/1.1 200 OK\r\nX-Trace: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "version": b"HTTP/9.9 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "status_line": b"garbage\r\n\r\n",
    "status_code": b"HTTP/1.1 999999 Odd\r\nContent-Length: 2\r\n\r\n{}",
    "chunk_size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[str]:
    """A server on loopback that answers every request with `answer`, as it is."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("name", sorted(NOT_HTTP))
async def test_an_answer_that_is_not_http_is_unavailable_with_its_reason(name: str) -> None:
    async with raw_server(NOT_HTTP[name]) as url, open_http(Settings()) as http:
        client = FirecrawlClient(http, url, "fc-test")
        with pytest.raises(Unavailable) as caught:
            await client.status("0198f6f5-4a1e-7000-8000-000000000001")
    assert caught.value.reason == "bad_answer"
    message = str(caught.value)
    assert message.startswith("firecrawl answered something that is not HTTP: ")
    assert "\n" not in message and url not in message


@pytest.mark.parametrize(
    ("base_url", "path", "says"),
    [
        # aiohttp refuses credentials in a URL beside our Authorization header (ValueError)
        ("http://user:pw@127.0.0.1:9", "/v3/task", "Cannot combine AUTHORIZATION header"),
        # a port out of range: aiohttp's InvalidUrlClientError, httpx's UnsupportedProtocol
        ("http://127.0.0.1:99999", "/v3/task", "URL cannot be requested"),
        # bytes no URL holds: httpx.InvalidURL
        ("http://127.0.0.1:9", "/v3/task/a\r\nb", "non-printable"),
    ],
)
async def test_a_url_that_cannot_be_requested_is_rejected_as_bad_url(
    base_url: str, path: str, says: str
) -> None:
    async with open_http(Settings()) as http:
        client = DecodoClient(http, base_url, "dXNlcjpwYXNz")
        with pytest.raises(Rejected) as caught:
            await client.request("GET", client.url(path))
    assert caught.value.reason == "bad_url"
    assert str(caught.value).startswith("decodo URL cannot be requested: ")
    assert says in str(caught.value)
    assert "pw" not in str(caught.value)


async def test_an_unparsable_url_of_another_host_is_rejected_as_bad_url() -> None:
    async with open_http(Settings()) as http:
        client = ProviderClient(http, "http://127.0.0.1:9002", {})
        with pytest.raises(Rejected) as caught:
            await client.request("GET", "http://127.0.0.1:9002:99999/v2/batch/scrape/x")
    assert (caught.value.reason, "Invalid port" in str(caught.value)) == ("bad_url", True)
