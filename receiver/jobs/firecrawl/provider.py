"""Firecrawl's registry entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver import display, schemas
from receiver.display import Display
from receiver.jobs.base import Cancelled, Context, Provider, Schema, Workflow, stall
from receiver.jobs.firecrawl.request import MAX_URLS, OPTIONS, UUID, parse_request
from receiver.jobs.firecrawl.workflow import FirecrawlJobs
from receiver.providers.firecrawl import FirecrawlClient
from receiver.settings import FIRECRAWL_BASE_URL, Settings
from receiver.store import Store, Work, iso, new_job_id


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
            work=Work.SUBMIT,
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
