"""The Firecrawl simulator's knobs, and the values a knob of a few choices takes."""

from __future__ import annotations

from dataclasses import dataclass

from receiver.sandbox.faults import FaultKnobs

# How GET /v2/batch/scrape/{id} pages its documents (the `paging` knob).
CLOUD_PAGING = "cloud"
SELFHOSTED_PAGING = "selfhosted"
# Who sends the webhooks (the `webhook_style` knob).
CLOUD_WEBHOOKS = "cloud"
SELFHOSTED_WEBHOOKS = "selfhosted"
# The per-page failure codes of the real server, with their messages (captures 025, 035).
FAIL_MESSAGES = {
    "SCRAPE_TIMEOUT": "Scrape timed out",
    "SCRAPE_ALL_ENGINES_FAILED": (
        "All scraping engines failed! -- Double check the URL to make sure it's not broken."
        " If the issue persists, contact us at help@firecrawl.com."
    ),
}


@dataclass
class FirecrawlSandboxConfig(FaultKnobs):
    """Knobs of the simulator; each is also `--knob-name` on the command line and a key of
    PATCH /_sandbox/config. The fault knobs it shares with the other sandboxes are in
    `faults.FaultKnobs`. The defaults answer like Firecrawl's cloud API; the knobs that say
    "self-hosted" make it answer like the self-hosted build of the captures (August 2025)."""

    api_key: str = "fc-sandbox"  # the only bearer token accepted
    scrape_delay: float = 1.0  # seconds one page takes to scrape
    jitter: float = 0.0  # up to this many extra seconds per page, drawn from the seeded RNG
    concurrency: int = 10  # pages scraped at once (a smaller body maxConcurrency wins)
    fail_rate: float = 0.0  # share of pages that fail outright and drop out of `total`
    # The codes failed pages are listed with at /errors, comma-separated, taken in turn by
    # page index; each a key of FAIL_MESSAGES (e.g. "SCRAPE_TIMEOUT" for timeouts only).
    fail_codes: str = "SCRAPE_ALL_ENGINES_FAILED,SCRAPE_TIMEOUT"
    not_found_rate: float = 0.0  # share of pages whose target answers 404 (still a success)
    linger: float = 0.0  # seconds to stay `scraping` with completed == total
    batch_fails: bool = False  # a batch whose pages are done ends `failed`, not `completed`
    stall: bool = False  # the last page never finishes, so the batch never completes
    # "cloud" honours skip and limit: pages of page_size documents. "selfhosted" ignores
    # both, as the self-hosted build does: every poll, and every `next`, answers the first
    # page, so the documents past it can never be read.
    paging: str = CLOUD_PAGING
    page_size: int = 100  # most documents in one cloud page
    # Most bytes of serialized documents in one page, either paging (10 MiB): the document
    # that passes it is left for the next page, unless it is the page's only one.
    page_max_bytes: int = 10 * 1024 * 1024
    # Bytes of each serialized document, its markdown padded up to it (documents with the
    # markdown format, the default); 0 leaves them at their natural size, about 700 bytes.
    document_bytes: int = 0
    next_base_url: str | None = None  # origin for `next` URLs instead of the request's own
    # Scheme of the submit answer's `url` and of `next` (unless next_base_url is set), on
    # the request's own host and port; None keeps the request's. "https" answers as a
    # self-hosted server run without ENV=local does, although it serves plain HTTP.
    url_scheme: str | None = None
    expiry: float = 86400.0  # seconds a batch lives after its last save
    max_urls: int = 1000  # most URLs in one submission
    credits: int | None = None  # credits for all submissions together; None is unlimited
    # DELETE of a completed batch answers 409 and leaves it completed, as newer source does;
    # False answers 200 {"status": "cancelled"} and turns it cancelled for good, as the
    # self-hosted build did (captures 051, 052).
    conflict_on_completed_cancel: bool = False
    # Serve GET /v2/batch/scrape/{id}/errors, as newer source does; False answers Express's
    # HTML 404 page there, as the self-hosted build does (capture 024). The same list is
    # always at GET /v2/crawl/{id}/errors and GET /v1/batch/scrape/{id}/errors.
    v2_batch_errors: bool = True
    get_429_rate: float = 0.0  # share of status polls answered 429
    get_500_rate: float = 0.0  # share of status polls answered 500
    get_402_rate: float = 0.0  # share of status polls answered 402 (seed 000's body)
    post_429_rate: float = 0.0  # share of submissions answered 429
    post_500_rate: float = 0.0  # share of submissions answered 500
    delete_429_rate: float = 0.0  # share of cancels answered 429
    delete_500_rate: float = 0.0  # share of cancels answered 500
    retry_after: int = 2  # seconds quoted in the 429 message
    retry_after_header: bool = False  # also send Retry-After (the real server does not)
    # "cloud": signed with webhook_secret (when set), a webhookId per delivery, retried after
    # webhook_retry_delays. "selfhosted", as the self-hosted build sends them (capture 053):
    # axios's headers and the webhook's own, no signature whatever webhook_secret says, no
    # webhookId, no retry after a non-2xx or a failure.
    webhook_style: str = CLOUD_WEBHOOKS
    webhook_secret: str | None = None  # cloud webhooks carry X-Firecrawl-Signature when set
    webhook_drop_rate: float = 0.0  # share of webhook deliveries never sent
    webhook_duplicate_rate: float = 0.0  # share of deliveries sent twice, identically
    webhook_retry_delays: str = "60,300,900"  # seconds before each retry of a cloud delivery
    webhook_timeout: float = 10.0  # seconds before a webhook delivery is abandoned
    get_latency: float = 0.0  # seconds a status poll takes to answer
    seed: int | None = None  # seed of the RNG behind every random choice

    def __post_init__(self) -> None:
        """Refuse a knob set to none of its choices (PATCH /_sandbox/config answers 400)."""
        _check_choice("paging", self.paging, (CLOUD_PAGING, SELFHOSTED_PAGING))
        _check_choice("webhook_style", self.webhook_style, (CLOUD_WEBHOOKS, SELFHOSTED_WEBHOOKS))
        if self.url_scheme is not None:
            _check_choice("url_scheme", self.url_scheme, ("http", "https"))
        for code in self.failure_codes():
            _check_choice("fail_codes", code, tuple(FAIL_MESSAGES))

    def failure_codes(self) -> list[str]:
        codes = [code.strip() for code in self.fail_codes.split(",") if code.strip()]
        if not codes:
            raise ValueError("fail_codes names no code")
        return codes


def _check_choice(knob: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{knob}: {value!r} is none of {', '.join(choices)}")
