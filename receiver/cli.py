"""The `receiver` command."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
import orjson

from receiver.errors import ConfigError
from receiver.logs import configure_logging
from receiver.settings import Settings

if TYPE_CHECKING:
    from receiver.client.api import Api


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def _prepared(settings: Settings, *, join: bool = True) -> Iterator[Settings]:
    """Settings ready to serve: with an embedded Redis and its secrets when REDIS_URL is
    unset (`join`: one another process of the data dir runs will do), and the durability
    level in force. Exits non-zero if the embedded Redis could not be kept running."""
    from receiver import embedded
    from receiver.service import exit_on_sigterm

    exit_on_sigterm()
    try:
        settings.check()
        if not settings.embedded:
            settings.require_secrets()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not settings.embedded:
        yield _durable(settings)
        return
    found = embedded.load_secrets(settings.data_dir)
    settings = embedded.with_embedded_secrets(settings, found)
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                embedded.embedded_redis(settings.data_dir, found.redis_password, join=join)
            )
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            yield _durable(settings.with_changes(redis_url=server.url))
        finally:
            if server.failed:  # the process stops for it, whatever else was raising
                raise click.exceptions.Exit(1)


def _durable(settings: Settings) -> Settings:
    """The settings with what the Redis says: the durability level in force, whether it is
    a cluster, and the deployment's number of partitions (recorded by its first process)."""
    from receiver.durability import check_redis
    from receiver.store.server import detect_cluster, settle_partitions

    try:
        settings = check_redis(settings)
        settings = settings.with_changes(redis_cluster=detect_cluster(settings))
        return settings.with_changes(partitions=settle_partitions(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="receiver")
def main() -> None:
    """Reliable callbacks and polls for asynchronous scraping and indexing jobs."""


@main.command()
@click.option(
    "--sandbox",
    is_flag=True,
    help="Also start the three provider sandboxes and point the providers at them: a trial "
    "of the whole path with no provider account.",
)
def run(sandbox: bool) -> None:
    """Serve the web app and a worker in one process (embedded Redis when REDIS_URL is unset)."""
    from receiver.service import ProcessStop, serve, web_app

    settings = _settings()
    configure_logging(settings.log_format)
    stop = ProcessStop()
    try:
        with contextlib.ExitStack() as stack:
            if sandbox:
                settings = _with_sandboxes(stack, settings)
            ready = stack.enter_context(_prepared(settings, join=False))
            _announce(ready)
            serve(web_app(ready, stop=stop), ready)
    finally:
        if stop.reason:  # the worker met a fatal fault: exit non-zero, not as on SIGTERM
            raise click.exceptions.Exit(1)


def _with_sandboxes(stack: contextlib.ExitStack, settings: Settings) -> Settings:
    from receiver import trial

    sandboxes = stack.enter_context(trial.running_sandboxes())
    for name, url in sandboxes.urls.items():
        click.echo(f"{name} sandbox on {url}")
    return trial.with_sandboxes(settings, sandboxes)


@main.command()
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Processes serving on the one port, their metrics added up; per-process limits "
    "(RECEIVER_MAX_CONNECTIONS, RECEIVER_MAX_STREAMS) multiply by it. "
    "[default: RECEIVER_WEB_WORKERS, else 1]",
)
def web(workers: int | None) -> None:
    """Serve the web app only."""
    settings = _settings()
    configure_logging(settings.log_format)
    workers = workers or settings.web_workers
    with _prepared(settings) as ready:
        _announce(ready)
        if workers == 1:
            from receiver.service import serve, web_app

            serve(web_app(ready), ready)
            return
        from receiver.processes import serve_workers

        try:
            serve_workers(ready, workers)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None


@main.command()
def worker() -> None:
    """Run a worker only."""
    from receiver.outages import Fatal
    from receiver.service import run_forever, run_worker

    settings = _settings()
    configure_logging(settings.log_format)
    with _prepared(settings) as ready:
        try:
            run_forever(run_worker(ready))
        except Fatal as exc:
            logging.getLogger("receiver.worker").critical(
                "worker stopped", extra={"reason": str(exc)}
            )
            raise click.exceptions.Exit(1) from None


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


def _api() -> Api:
    """The running receiver the client commands talk to (imported here, not at the top:
    the web app and the worker load nothing of the client)."""
    from receiver.client.api import Api

    return Api.from_settings(_settings())


def _print(data: Any) -> None:
    """JSON as the receiver answered it, its controls escaped as JSON escapes them."""
    from receiver.client.text import json_text

    click.echo(json_text(data, indent=True))


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
    _print(_api().create_job(body))


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
    _print(_api().create_job(body))


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
    _print(_api().create_job(body))


@track.command("dify")
@click.argument("dataset_id")
@click.argument("batch")
@click.option("--stall-after", type=float, help="Seconds without progress before it fails.")
def track_dify(dataset_id: str, batch: str, stall_after: float | None) -> None:
    """Poll the indexing of Dify's DATASET_ID documents of BATCH to the end."""
    body: dict[str, Any] = {"provider": "dify", "dataset_id": dataset_id, "batch": batch}
    if stall_after is not None:
        body["stall_after"] = stall_after
    _print(_api().create_job(body))


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


# -- operators' commands ----------------------------------------------------------------

_STATUSES = ("submitted", "running", "completed", "failed", "cancelled", "expired")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")


@main.command()
@click.argument("job_id", metavar="[JOB]", required=False)
@click.option(
    "--give-up-after",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds without any connection to the receiver before giving up.",
)
@click.option(
    "--retries",
    type=click.IntRange(0),
    help="Also give up after this many failed reconnections in a row (default: no limit).",
)
@click.pass_context
def watch(
    ctx: click.Context, job_id: str | None, give_up_after: float, retries: int | None
) -> None:
    """Follow JOB live until it ends; without JOB, every job in flight until Ctrl-C.

    Driven by the job's events (GET /jobs/JOB/events): a progress bar on a terminal, one
    line per event when piped. A dropped stream is resumed where it stopped, with a backoff
    of a few seconds at most; each connection made counts afresh, however quiet the job.

    \b
    Exit codes with JOB:
      0    the job completed
      1    the job failed
      2    the job was cancelled (click's usage errors also exit 2)
      3    the job expired
      4    no such job
      5    the receiver refused the request, or there was no connection to it
           for --give-up-after seconds (or --retries reconnections in a row)
      130  interrupted (Ctrl-C)
    Without JOB: 0 on Ctrl-C, 5 as above.
    """
    from receiver.client import watch as watching
    from receiver.client.text import printable

    def notify(message: str) -> None:  # it quotes the receiver's refusals: text
        click.echo(printable(message), err=True)

    with watching.event_sources(_api(), give_up_after, retries, notify) as sources:
        try:
            if job_id is None:
                watching.follow_all(sources)
                code = 0  # pragma: no cover - it only ends by Ctrl-C or an error
            else:
                code = watching.follow_job(sources, job_id)
        except KeyboardInterrupt:
            code = 0 if job_id is None else watching.EXIT_INTERRUPTED
    ctx.exit(code)


@main.command()
@click.option("--status", type=click.Choice(_STATUSES), help="Only jobs with this status.")
@click.option("--provider", help="Only jobs of this provider (decodo, firecrawl, dify).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@_JSON
def jobs(status: str | None, provider: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    found = _api().list_jobs(status, provider, limit)
    if as_json:
        _print(found)
        return
    from receiver.client import tables

    tables.print_jobs(tables.make_console(), found)


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--all", "show_all", is_flag=True, help="List every item, not the first 50.")
@_JSON
def show(job_id: str, show_all: bool, as_json: bool) -> None:
    """Show one job, its progress in its provider's words, and its items (tasks, pages or
    documents) with their errors.

    Exits 4 when there is no such job.
    """
    _show_job(_api().get_job(job_id), as_json, None if show_all else 50)


@main.command()
@click.argument("job_id", metavar="JOB")
@_JSON
def retry(job_id: str, as_json: bool) -> None:
    """Retry JOB, a job that failed, expired or was cancelled: its unfinished work again.

    Exits 4 when there is no such job, 1 when the receiver refuses (409: the job runs or
    completed).
    """
    _show_job(_api().retry_job(job_id), as_json)


@main.command()
@click.argument("job_id", metavar="JOB")
@_JSON
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel JOB, at the provider when it can stop it; the job, and what the provider said.

    A Firecrawl job ends `cancelled` once the pages still in flight at Firecrawl have landed;
    a Dify job is cancelled here only (Dify's API cannot stop indexing). Exits 4 when there is
    no such job, 1 when the receiver refuses (409: it already ended).
    """
    _show_job(_api().cancel_job(job_id), as_json)


def _show_job(job: Any, as_json: bool, most: int | None = 50) -> None:
    if as_json:
        _print(job)
        return
    from receiver.client import tables

    tables.print_job(tables.make_console(), job, most)


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
