"""The ingest baseline: a bare Starlette endpoint that reads the body and answers 202.

`python -m benchmarks.bare --port N` serves it under uvicorn with the settings of
`receiver web` (receiver.service.serve): one process, uvicorn's default loop and HTTP
implementations (uvloop and httptools when installed), log level warning.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.common import CALLBACK_PATH, HOST

_ANSWER = b'{"status":"accepted"}'


async def accept(request: Request) -> Response:
    await request.body()
    return Response(_ANSWER, 202, media_type="application/json")


def create_app() -> Starlette:
    return Starlette(routes=[Route(CALLBACK_PATH, accept, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Starlette callback endpoint")
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    config = uvicorn.Config(
        create_app(),
        host=HOST,
        port=port,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
