"""Firecrawl batch scrape jobs: validate, submit, poll to the end, collect every document."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from receiver import display, schemas
from receiver.display import Display
from receiver.errors import InvalidRequest, Permanent, Transient
from receiver.jobs.base import Cancelled, Context, Provider, Schema, Workflow, stall
from receiver.jobs.common import optional_stall_after
from receiver.polling import Observation, Poller, last_moved_at, parse_time, signature
from receiver.providers.firecrawl import BatchStatus, FirecrawlClient, PageError, document_key
from receiver.settings import FIRECRAWL_BASE_URL, Settings
from receiver.store import JobStatus, Store, iso, new_job_id, one_line
from receiver.tokens import PassthroughSigner

log = logging.getLogger(__name__)

# URLs in one batch: beyond it a request is refused here rather than by Firecrawl.
MAX_URLS = 1000
# The scrape and batch options Firecrawl's strict body accepts beside `urls`, each with the
# kind of JSON value its schema takes and, for arrays and objects, the kind of their members.
OPTION_KINDS: dict[str, tuple[str, str | None]] = {
    "formats": ("array", "format"),
    "headers": ("object", "string"),
    "includeTags": ("array", "string"),
    "excludeTags": ("array", "string"),
    "onlyMainContent": ("boolean", None),
    "onlyCleanContent": ("boolean", None),
    "timeout": ("integer", None),
    "waitFor": ("integer", None),
    "mobile": ("boolean", None),
    "parsers": ("array", None),
    "actions": ("array", None),
    "location": ("object", None),
    "skipTlsVerification": ("boolean", None),
    "removeBase64Images": ("boolean", None),
    "fastMode": ("boolean", None),
    "useMock": ("string", None),
    "blockAds": ("boolean", None),
    "proxy": ("proxy", None),
    "maxAge": ("integer", None),
    "minAge": ("integer", None),
    "storeInCache": ("boolean", None),
    "lockdown": ("boolean", None),
    "safeMode": ("boolean", None),
    "redactPII": ("any", None),
    "profile": ("object", None),
    "origin": ("string", None),
    "integration": ("string", None),
    "appendToId": ("uuid", None),
    "ignoreInvalidURLs": ("boolean", None),
    "maxConcurrency": ("positive", None),
    "zeroDataRetention": ("boolean", None),
}
OPTIONS = frozenset(OPTION_KINDS)
PROXIES = ("basic", "stealth", "enhanced", "auto")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# What each kind of option value accepts, and how an error names it.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "any": (lambda v: True, "anything"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "integer": (lambda v: _is_integer(v), "a whole number"),
    "positive": (lambda v: _is_integer(v) and v > 0, "a whole number above 0"),
    "array": (lambda v: isinstance(v, list), "an array"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "format": (lambda v: _is_format(v), "a format name or an object with a string type"),
    "proxy": (lambda v: v in PROXIES, "one of " + ", ".join(PROXIES)),
    "uuid": (lambda v: isinstance(v, str) and bool(UUID.fullmatch(v)), "a batch id (a UUID)"),
}
# Seconds without a page landing after which a cancelled batch is over although Firecrawl's
# total was not reached: pages in flight at a cancel land within their scrape timeout.
CANCEL_SETTLE = 120.0
# The webhook events we ask Firecrawl for: those that make a poll due (callbacks.py).
WEBHOOK_EVENTS = ("completed", "failed")


@dataclass(frozen=True)
class FirecrawlRequest:
    batch_id: str | None  # track this existing batch
    urls: list[str]  # or submit these
    options: dict[str, Any]
    stall_after: float | None


def parse_request(body: Mapping[str, Any]) -> FirecrawlRequest:
    """Validate a POST /jobs body for Firecrawl; InvalidRequest says what is wrong."""
    extra = set(body) - OPTIONS - {"provider", "batch_id", "urls", "stall_after"}
    if extra:
        raise InvalidRequest(f"unknown Firecrawl option(s): {', '.join(sorted(extra))}")
    stall_after = optional_stall_after(body)
    if ("batch_id" in body) == ("urls" in body):
        raise InvalidRequest("give either batch_id (to track a batch) or urls (to submit one)")
    if "batch_id" in body:
        batch_id = body["batch_id"]
        if not isinstance(batch_id, str) or not UUID.fullmatch(batch_id):
            raise InvalidRequest("batch_id must be a Firecrawl batch id (a UUID)")
        if set(body) & OPTIONS:
            raise InvalidRequest("scrape options only go with urls, not with batch_id")
        return FirecrawlRequest(batch_id.lower(), [], {}, stall_after)
    urls = body["urls"]
    if not isinstance(urls, list) or not urls:
        raise InvalidRequest("urls must be a non-empty list of URLs")
    if len(urls) > MAX_URLS:
        raise InvalidRequest(f"urls holds {len(urls)} URLs; Firecrawl takes at most {MAX_URLS}")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequest("every url must be a string starting with http:// or https://")
    options = {k: v for k, v in body.items() if k in OPTIONS}
    for name, value in options.items():
        check_option(name, value)
    return FirecrawlRequest(None, list(urls), options, stall_after)


def check_option(name: str, value: Any) -> None:
    """InvalidRequest unless the option's value has the JSON type Firecrawl's schema takes:
    caught here, a wrong type is a 400 now rather than a job failing later."""
    kind, member = OPTION_KINDS[name]
    accepts, wanted = _KINDS[kind]
    if not accepts(value):
        raise InvalidRequest(f"{name} must be {wanted}, not {_json_type(value)}")
    if member is None:
        return
    members = value.values() if isinstance(value, dict) else value
    accepts, wanted = _KINDS[member]
    for item in members:
        if not accepts(item):
            raise InvalidRequest(f"every member of {name} must be {wanted}, not {_json_type(item)}")


def _is_integer(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and float(value).is_integer()


def _is_format(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, dict) and isinstance(value.get("type"), str)
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


@dataclass(frozen=True)
class Tally:
    """Where every URL of a batch ended, once it is over."""

    total: int  # URLs: those submitted, or (tracked) Firecrawl's total and its failed pages
    completed: int  # pages scraped
    failed: int  # the rest: failed, invalid, dropped by a cancel or never landed
    failures: list[dict[str, Any]]  # {url, code, error} of the pages the errors route lists
    documents: int  # distinct documents read
    documents_missing: int  # pages scraped whose documents Firecrawl did not serve
    missing_urls: list[str]  # of those, the URLs known (submitted jobs only)

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "documents": self.documents,
            "documents_missing": self.documents_missing,
        }
        for name in ("failures", "missing_urls"):
            if getattr(self, name):
                fields[name] = orjson.dumps(getattr(self, name))
        return fields

    def detail(self) -> dict[str, Any]:
        # Lists only when not empty: the event script's cjson writes an empty one as {}.
        detail: dict[str, Any] = {
            "documents": self.documents,
            "documents_missing": self.documents_missing,
        }
        for name in ("failures", "missing_urls"):
            if getattr(self, name):
                detail[name] = getattr(self, name)
        return detail


def live_counts(job: Mapping[str, Any], batch: BatchStatus) -> dict[str, int]:
    """completed, total and failed while the batch runs. A submitted job's total is what was
    submitted: the pages Firecrawl dropped from its own total have failed (or were invalid)."""
    urls = _submitted(job)
    if urls is None:
        return {"completed": batch.completed, "total": batch.total}
    total = len(urls)
    completed = min(batch.completed, total)
    dropped = max(len(job.get("invalid_urls") or []), total - batch.total)
    return {"completed": completed, "total": total, "failed": min(dropped, total - completed)}


def tally(
    job: Mapping[str, Any],
    batch: BatchStatus,
    documents: list[dict[str, Any]],
    errors: list[PageError],
) -> Tally:
    """Every URL of an ended batch as completed or failed, and the documents not served."""
    failures = [{"url": e.url, "code": e.code, "error": one_line(e.error)} for e in errors]
    urls = _submitted(job)
    total = len(urls) if urls is not None else batch.total + len(failures)
    completed = min(batch.completed, total)
    missing = max(0, completed - len(documents))
    known: list[str] = []
    if urls is not None and missing:
        known = _unread(urls, documents, errors, job.get("invalid_urls") or [])
        if len(known) > missing:  # URLs that do not match their documents': not known
            known = []
    return Tally(total, completed, total - completed, failures, len(documents), missing, known)


def _submitted(job: Mapping[str, Any]) -> list[str] | None:
    urls = (job.get("params") or {}).get("urls")
    return urls if isinstance(urls, list) else None


def _unread(
    urls: list[str],
    documents: list[dict[str, Any]],
    errors: list[PageError],
    invalid: list[str],
) -> list[str]:
    """The submitted URLs neither read, failed nor invalid: scraped, but not served."""
    accounted = {_plain(e.url) for e in errors} | {_plain(u) for u in invalid}
    for document in documents:
        metadata = document.get("metadata")
        if isinstance(metadata, Mapping):
            accounted |= {
                _plain(metadata[k])
                for k in ("sourceURL", "url")
                if isinstance(metadata.get(k), str)
            }
    return [url for url in urls if _plain(url) not in accounted]


def _plain(url: str) -> str:
    return url.rstrip("/")


def ending(job: Mapping[str, Any], batch: BatchStatus, counted: Tally) -> tuple[JobStatus, str]:
    """The job's outcome and the reason given with it ("" for a whole completed batch)."""
    missing = ""
    if counted.documents_missing:
        missing = (
            f"firecrawl served only {counted.documents} of {counted.completed} documents: "
            f"{counted.documents_missing} could not be read from its result pages"
        )
    if batch.status == "cancelled":
        user = job.get("cancel_requested_at")
        who = "cancelled by a user" if user else "firecrawl reported the batch cancelled"
        scraped = f"{counted.completed} of {counted.total} pages scraped"
        return JobStatus.CANCELLED, _joined(f"{who}: {scraped}", missing)
    failed = ""
    if counted.failed:
        invalid = len(job.get("invalid_urls") or [])
        failed = f"{counted.failed} of {counted.total} URLs failed"
        failed += f" ({invalid} invalid)" if invalid else ""
    if batch.status == "failed":
        return JobStatus.FAILED, _joined("firecrawl reported the batch failed", failed, missing)
    if counted.completed == 0 and counted.failed:
        return JobStatus.FAILED, _joined(f"no page scraped: {failed}", _first_failure(counted))
    return JobStatus.COMPLETED, _joined(failed, missing)


def _first_failure(counted: Tally) -> str:
    if not counted.failures:
        return ""
    first = counted.failures[0]
    return f"first: {first['url']} {first['code'] or ''} {first['error']}".strip()


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


class FirecrawlJobs(Poller):
    provider = "firecrawl"

    def __init__(
        self,
        store: Store,
        client: FirecrawlClient,
        settings: Settings,
        signer: PassthroughSigner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(store, settings, clock)
        self.client = client
        self.signer = signer  # of the token in the webhook URL: the web side checks it

    @property
    def rate(self) -> float:
        return self.settings.firecrawl_rps

    def webhook(self, job_id: str) -> dict[str, Any]:
        """The webhook of a batch we submit: its URL carries the job's signed token, since a
        self-hosted Firecrawl signs nothing (the cloud signs too, with the account secret)."""
        token = self.signer.sign(job_id)
        return {
            "url": f"{self.settings.public_url}/callbacks/firecrawl?token={token}",
            "metadata": {"job_id": job_id},
            "events": list(WEBHOOK_EVENTS),
        }

    async def submit(self, job_id: str) -> float | None:
        """POST /v2/batch/scrape, then the batch is polled like a tracked one."""
        job = await self.store.get_job(job_id)
        if job is None or JobStatus(job["status"]).terminal or job.get("external"):
            return None
        params = job["params"]
        wait = await self._take_turn()  # the POST counts against the provider's rate too
        if wait > 0:
            return self.clock() + wait
        try:
            submitted = await self.client.submit(
                params["urls"], params["options"], self.webhook(job_id)
            )
        except Transient as exc:
            return await self._retry(job_id, exc)
        except Permanent as exc:
            await self._fail(job_id, exc)
            return None
        await self.store.record_external("firecrawl", submitted.id, job_id)
        invalid = submitted.invalid_urls
        fields = {
            "external": orjson.dumps({"batch_id": submitted.id}),
            "status": "running",
            "invalid_urls": orjson.dumps(invalid),
            "failed": len(invalid),
            "consecutive_failures": 0,  # the submission worked: its retries are over
            "last_error": "",
        }
        detail: dict[str, Any] = {"batch_id": submitted.id}
        if invalid:
            detail["invalid_urls"] = invalid
        updated = await self.store.update_job(job_id, fields, event="job.progress", detail=detail)
        if updated == "closed":  # cancelled while the submission was on its way
            await self._cancel_batch(job_id, submitted.id)
            return None
        await self.store.schedule(f"poll:{job_id}", self.clock())
        return None

    async def _cancel_batch(self, job_id: str, batch_id: str) -> None:
        """Stop a batch whose job ended before it was submitted: nobody polls it."""
        try:
            await self.cancel_at_firecrawl(batch_id)
        except (Transient, Permanent) as exc:
            log.warning(
                "could not cancel the batch of an ended job",
                extra={"job_id": job_id, "provider": self.provider, "reason": exc.reason},
            )

    async def observe(self, job: Mapping[str, Any]) -> Observation:
        batch = await self.client.status(job["external"]["batch_id"])
        seen = Observation(
            signature=signature(batch.status, batch.completed, batch.total),
            fields={**live_counts(job, batch), "provider_status": batch.status},
            detail={"provider_status": batch.status},
            expires_at=parse_time(batch.expires_at),
        )
        if batch.credits_used is not None:
            seen.fields["credits_used"] = batch.credits_used
        if batch.expires_at:
            seen.fields["expires_at"] = batch.expires_at
        if batch.terminal and (
            batch.status != "cancelled" or self._cancel_settled(job, seen, batch)
        ):
            await self._conclude(job, batch, seen)
        return seen  # a cancelled batch still landing the pages in flight: polled again

    async def _conclude(
        self, job: Mapping[str, Any], batch: BatchStatus, seen: Observation
    ) -> None:
        """The failed pages' reasons, every document stored, and the job's outcome."""
        errors = await self._errors(job, batch)
        documents = await self.client.collect(batch, turn=self._wait_turn)
        await self.store.store_documents(
            job["id"],
            {document_key(d): orjson.dumps(d) for d in documents},
            self.settings.results_ttl,
        )
        counted = tally(job, batch, documents, errors)
        seen.fields |= counted.fields()
        seen.detail |= counted.detail()
        # Never the signature of a poll before: the final counts go out in a job.progress.
        seen.signature = signature(batch.status, batch.completed, batch.total, len(documents))
        seen.final, seen.reason = ending(job, batch, counted)

    async def _errors(self, job: Mapping[str, Any], batch: BatchStatus) -> list[PageError]:
        """The failed pages, from the errors route; none asked for when a submitted batch
        completed whole. A route that refuses us leaves the reasons unknown (logged)."""
        urls = _submitted(job)
        if urls is not None and batch.status == "completed":
            valid = len(urls) - len(job.get("invalid_urls") or [])
            if batch.completed >= batch.total >= valid:
                return []
        await self._wait_turn()
        try:
            return await self.client.errors(job["external"]["batch_id"])
        except Permanent as exc:
            log.warning(
                "firecrawl errors route refused; failed pages counted without reasons",
                extra={"job_id": job["id"], "provider": self.provider, "reason": exc.reason},
            )
            return []

    def _cancel_settled(
        self, job: Mapping[str, Any], seen: Observation, batch: BatchStatus
    ) -> bool:
        """A cancelled batch is over once every page it kept has landed, or once none has
        for a while (then the job ends `cancelled`, a little before `stalled` would end it)."""
        if batch.completed >= batch.total:
            return True
        if seen.signature != job.get("signature"):
            return False
        quiet = min(CANCEL_SETTLE, 0.8 * self.stall_after(job))
        return self.clock() - last_moved_at(job) > quiet

    async def cancel(self, job: Mapping[str, Any]) -> str:
        """A user's cancel: DELETE the batch, then poll it until the pages in flight land.
        The cancel counts as progress, so the stall timeout starts over from it."""
        said = await self.cancel_at_firecrawl(job["external"]["batch_id"])
        now = self.clock()
        fields = {"cancel_requested_at": now, "moved_at": now, "provider_status": said}
        detail = {"provider_status": said, "cancel_requested_at": iso(now)}
        await self.store.update_job(job["id"], fields, event="job.progress", detail=detail)
        await self.store.hint_poll(job["id"])  # the pages in flight are looked for at once
        return said

    async def cancel_at_firecrawl(self, batch_id: str) -> str:
        await self._wait_turn()  # a user waits on it: a turn is waited for, not rescheduled
        return await self.client.cancel(batch_id)


class Firecrawl(Provider):
    """Firecrawl's v2 batch scrape: submitted or tracked, polled to the end (webhooks hint)."""

    name = "firecrawl"
    display = Display("pages", display.firecrawl)
    credentials = (("firecrawl_api_key", "FIRECRAWL_API_KEY"),)

    def missing_credential(self, settings: Settings) -> str | None:
        # A self-hosted server runs without keys (USE_DB_AUTHENTICATION=false); the cloud not.
        if settings.firecrawl_base_url.rstrip("/") != FIRECRAWL_BASE_URL:
            return None
        return super().missing_credential(settings)

    async def create(self, body: Mapping[str, Any], store: Store) -> tuple[str, bool]:
        request = parse_request(body)
        extra = stall(request.stall_after)
        if request.batch_id is not None:
            external = {"batch_id": request.batch_id}
            return await store.track_job(self.name, request.batch_id, external, extra)
        job_id = new_job_id()
        await store.create_job(
            job_id,
            self.name,
            total=len(request.urls),
            params={"urls": request.urls, "options": request.options},
            work="submit",
            submitting=False,
            extra=extra,
        )
        return job_id, True

    def workflow(self, context: Context) -> FirecrawlJobs:
        settings = context.settings
        client = FirecrawlClient(
            context.http, settings.firecrawl_base_url, settings.firecrawl_api_key
        )
        return FirecrawlJobs(context.store, client, settings, context.signer.webhook_signer())

    async def cancel(self, job: Mapping[str, Any], workflow: Workflow) -> Cancelled:
        """Not submitted yet: cancelled here at once. Else the batch is cancelled at
        Firecrawl and the job ends once the pages in flight have landed, every one kept."""
        if not (job.get("external") or {}).get("batch_id"):
            return Cancelled("not submitted to firecrawl yet: nothing to stop there", False)
        assert isinstance(workflow, FirecrawlJobs)
        said = await workflow.cancel(job)
        message = f"firecrawl answered {said}; the job ends once the pages in flight have landed"
        return Cancelled(message, True, ends_now=False, provider_status=said)

    def public(self, job: Mapping[str, Any]) -> dict[str, Any]:
        requested = job.get("cancel_requested_at")
        return {"cancel_requested_at": iso(requested)} if requested else {}

    def request_schemas(self) -> dict[str, Schema]:
        track = schemas.obj(
            {
                "provider": {"const": self.name},
                "batch_id": {"type": "string", "pattern": UUID.pattern},
                "stall_after": schemas.stall_after(),
            },
            ["provider", "batch_id"],
            description="Track a batch scrape submitted elsewhere.",
        )
        options = {
            name: {"description": "Passed on to Firecrawl as given."} for name in sorted(OPTIONS)
        }
        urls = {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_URLS,
            "items": {"type": "string", "pattern": schemas.HTTP_URL},
        }
        submit = schemas.obj(
            {
                "provider": {"const": self.name},
                "urls": urls,
                "stall_after": schemas.stall_after(),
                **options,
            },
            ["provider", "urls"],
            description="Submit a batch scrape (POST /v2/batch/scrape) with Firecrawl's options.",
        )
        return {"FirecrawlTrackRequest": track, "FirecrawlSubmitRequest": submit}


PROVIDER = Firecrawl()
