"""Firecrawl batch scrape jobs: validate, submit, poll to the end, collect every document."""

from __future__ import annotations

import logging
import re
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
from receiver.providers.firecrawl import BatchStatus, FirecrawlClient, document_key
from receiver.settings import FIRECRAWL_BASE_URL, Settings
from receiver.store import JobStatus, Store, new_job_id
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
# The webhook events we ask Firecrawl for: those that make a poll due (callbacks.py).
WEBHOOK_EVENTS = ("completed", "failed")
# Job outcome for each terminal batch status.
_FINAL = {
    "completed": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
    "cancelled": JobStatus.CANCELLED,
}


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


class FirecrawlJobs(Poller):
    provider = "firecrawl"

    def __init__(
        self,
        store: Store,
        client: FirecrawlClient,
        settings: Settings,
        signer: PassthroughSigner,
    ) -> None:
        super().__init__(store, settings)
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
        fields = {
            "external": orjson.dumps({"batch_id": submitted.id}),
            "status": "running",
            "invalid_urls": orjson.dumps(submitted.invalid_urls),
            "consecutive_failures": 0,  # the submission worked: its retries are over
            "last_error": "",
        }
        await self.store.update_job(
            job_id,
            fields,
            event="job.progress",
            detail={"batch_id": submitted.id, "invalid_urls": submitted.invalid_urls},
        )
        await self.store.schedule(f"poll:{job_id}", self.clock())
        return None

    async def observe(self, job: Mapping[str, Any]) -> Observation:
        batch = await self.client.status(job["external"]["batch_id"])
        seen = Observation(
            signature=signature(batch.status, batch.completed, batch.total),
            fields={
                "completed": batch.completed,
                "total": batch.total,
                "provider_status": batch.status,
            },
            detail={"provider_status": batch.status},
            expires_at=parse_time(batch.expires_at),
        )
        if batch.credits_used is not None:
            seen.fields["credits_used"] = batch.credits_used
        if batch.expires_at:
            seen.fields["expires_at"] = batch.expires_at
        if batch.terminal:
            documents = await self.client.collect(batch, turn=self._wait_turn)
            await self.store.store_documents(
                job["id"],
                {document_key(d): orjson.dumps(d) for d in documents},
                self.settings.results_ttl,
            )
            seen.fields["documents"] = len(documents)
            if batch.status == "cancelled" and not self._cancel_settled(job, seen, batch):
                return seen  # pages started before the cancel still land: keep polling
            seen.final = _FINAL[batch.status]
            if batch.status != "completed":
                seen.reason = f"firecrawl reported the batch {batch.status}"
        return seen

    def _cancel_settled(
        self, job: Mapping[str, Any], seen: Observation, batch: BatchStatus
    ) -> bool:
        """A cancelled batch is over once every page it kept has landed, or once none has
        for the stall timeout (then the job ends `cancelled`, not `stalled`)."""
        if batch.completed >= batch.total:
            return True
        if seen.signature != job.get("signature"):
            return False
        return self.clock() - last_moved_at(job) > self.stall_after(job)

    async def cancel(self, batch_id: str) -> str:
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
        batch_id = (job.get("external") or {}).get("batch_id")
        if not batch_id:
            return Cancelled("not submitted to firecrawl yet: nothing to stop there", False)
        assert isinstance(workflow, FirecrawlJobs)
        said = await workflow.cancel(batch_id)
        return Cancelled(f"firecrawl answered {said}", True, provider_status=said)

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
