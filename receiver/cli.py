"""The `receiver` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import click
import httpx
import orjson

from receiver.errors import ConfigError
from receiver.logs import configure_logging
from receiver.settings import Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _exit_on_sigterm() -> None:
    """Unwind on SIGTERM as on Ctrl-C, so the embedded Redis is stopped on the way out.

    uvicorn re-raises the signal it caught once it has shut down; this handler then turns
    it into SystemExit instead of letting the default action kill the process on the spot.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def _prepared(settings: Settings) -> Iterator[Settings]:
    """Settings ready to serve: with an embedded Redis and its secrets when REDIS_URL is unset."""
    from receiver import embedded

    _exit_on_sigterm()
    if not settings.embedded:
        try:
            settings.require_secrets()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        yield settings
        return
    found = embedded.load_secrets(settings.data_dir)
    settings = embedded.with_embedded_secrets(settings, found)
    with embedded.embedded_redis(settings.data_dir, found.redis_password) as url:
        yield settings.with_changes(redis_url=url)


@click.group()
@click.version_option(package_name="receiver")
def main() -> None:
    """Reliable callbacks and polls for asynchronous scraping and indexing jobs."""


@main.command()
def run() -> None:
    """Serve the web app and a worker in one process (embedded Redis when REDIS_URL is unset)."""
    from receiver.service import serve, web_app

    settings = _settings()
    configure_logging(settings.log_format)
    with _prepared(settings) as ready:
        _announce(ready)
        serve(web_app(ready, with_worker=True), ready)


@main.command()
def web() -> None:
    """Serve the web app only."""
    from receiver.service import serve, web_app

    settings = _settings()
    configure_logging(settings.log_format)
    with _prepared(settings) as ready:
        _announce(ready)
        serve(web_app(ready), ready)


@main.command()
def worker() -> None:
    """Run a worker only."""
    from receiver.service import run_worker

    settings = _settings()
    configure_logging(settings.log_format)
    with _prepared(settings) as ready, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(ready))


def _announce(settings: Settings) -> None:
    local = f"http://{settings.host}:{settings.port}"
    click.echo(f"receiver listening on {local}")
    click.echo(f"  callback URL  {settings.public_url}/callbacks/decodo")
    click.echo(f"  health URL    {local}/healthz   (ready: {local}/readyz)")
    if settings.embedded or not os.environ.get("RECEIVER_API_TOKEN"):
        click.echo(f"  API token     {settings.api_token}")
        click.echo(f"  data dir      {settings.data_dir.resolve()}")
    sys.stdout.flush()


# -- API client commands ----------------------------------------------------------------


def _api() -> tuple[str, dict[str, str]]:
    settings = _settings()
    base = os.environ.get("RECEIVER_URL", f"http://127.0.0.1:{settings.port}").rstrip("/")
    token = settings.api_token
    if not token and settings.embedded:
        from receiver.embedded import load_secrets

        token = load_secrets(settings.data_dir).api_token
    return base, {"Authorization": f"Bearer {token}"}


def _call(method: str, path: str, body: Any = None) -> Any:
    base, headers = _api()
    try:
        response = httpx.request(
            method,
            base + path,
            headers=headers,
            content=orjson.dumps(body) if body is not None else None,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach receiver at {base}: {exc}") from None
    data = orjson.loads(response.content) if response.content else {}
    if response.status_code >= 400:
        message = data.get("message", response.text) if isinstance(data, dict) else response.text
        raise click.ClickException(f"{response.status_code}: {message}")
    return data


def _print(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


@main.group()
def submit() -> None:
    """Submit a new job to a provider."""


@submit.command("decodo")
@click.argument("items", nargs=-1, required=True)
@click.option("--query", "as_query", is_flag=True, help="ITEMS are queries, not URLs.")
@click.option("--target", help="Decodo target, such as universal or google_search.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Another Decodo parameter; VALUE is JSON when it parses as JSON.",
)
def submit_decodo(
    items: tuple[str, ...], as_query: bool, target: str | None, params: tuple[str, ...]
) -> None:
    """Submit URLs (or queries) to Decodo; one item is a task, several a batch."""
    body: dict[str, Any] = {"provider": "decodo"}
    if len(items) == 1:
        body["query" if as_query else "url"] = items[0]
    else:
        body["queries" if as_query else "urls"] = list(items)
    if target:
        body["target"] = target
    body.update(_params(params))
    _print(_call("POST", "/jobs", body))


@submit.command("firecrawl")
@click.argument("urls", nargs=-1, required=True)
@click.option("--format", "formats", multiple=True, help="Firecrawl format, e.g. markdown.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Another scrape option; VALUE is JSON when it parses as JSON.",
)
def submit_firecrawl(
    urls: tuple[str, ...], formats: tuple[str, ...], params: tuple[str, ...]
) -> None:
    """Submit a Firecrawl batch scrape of URLS and poll it to the end."""
    body: dict[str, Any] = {"provider": "firecrawl", "urls": list(urls)}
    if formats:
        body["formats"] = list(formats)
    body.update(_params(params))
    _print(_call("POST", "/jobs", body))


@main.group()
def track() -> None:
    """Track a job that already runs at a provider."""


@track.command("firecrawl")
@click.argument("batch_id")
@click.option("--stall-after", type=float, help="Seconds without progress before it fails.")
def track_firecrawl(batch_id: str, stall_after: float | None) -> None:
    """Poll the Firecrawl batch scrape BATCH_ID to the end."""
    body: dict[str, Any] = {"provider": "firecrawl", "batch_id": batch_id}
    if stall_after is not None:
        body["stall_after"] = stall_after
    _print(_call("POST", "/jobs", body))


@track.command("dify")
@click.argument("dataset_id")
@click.argument("batch")
@click.option("--stall-after", type=float, help="Seconds without progress before it fails.")
def track_dify(dataset_id: str, batch: str, stall_after: float | None) -> None:
    """Poll the indexing of Dify's DATASET_ID documents of BATCH to the end."""
    body: dict[str, Any] = {"provider": "dify", "dataset_id": dataset_id, "batch": batch}
    if stall_after is not None:
        body["stall_after"] = stall_after
    _print(_call("POST", "/jobs", body))


def _params(params: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE options; VALUE is JSON when it parses as JSON, else a string."""
    parsed: dict[str, Any] = {}
    for param in params:
        name, _, raw = param.partition("=")
        try:
            parsed[name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed[name] = raw
    return parsed


@main.command()
def jobs() -> None:
    """List jobs."""
    _print(_call("GET", "/jobs"))


@main.command()
@click.argument("job_id")
def show(job_id: str) -> None:
    """Show one job with its tasks."""
    _print(_call("GET", f"/jobs/{job_id}"))


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job."""
    _print(_call("DELETE", f"/jobs/{job_id}"))


# -- sandboxes --------------------------------------------------------------------------

_SANDBOXES = ("decodo", "firecrawl", "dify")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("provider", required=False, type=click.Choice([*_SANDBOXES, "all"]), default="all")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=9001,
    show_default=True,
    type=int,
    help="Port (of the first, with all: the others follow).",
)
@click.pass_context
def sandbox(ctx: click.Context, provider: str, host: str, port: int) -> None:
    """Run the provider simulators: knobs as --knob-name VALUE (see python -m
    receiver.sandbox.PROVIDER --help)."""
    from receiver.sandbox.runner import run_sandboxes

    chosen = _SANDBOXES if provider == "all" else (provider,)
    run_sandboxes(chosen, host, port, list(ctx.args))


if __name__ == "__main__":  # pragma: no cover
    main()
