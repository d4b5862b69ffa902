"""Firecrawl end to end: the receiver and its worker against the Firecrawl sandbox set to
answer like the self-hosted build of the captures."""

from __future__ import annotations

import time

from tests.e2e import polled_deployment
from tests.servers import RedisProcess


def urls(count: int) -> list[str]:
    return [f"https://site.example/page/{i}" for i in range(count)]


# -- webhooks from a self-hosted server --------------------------------------------------------


def test_selfhosted_webhooks_are_taken_and_hasten_the_poll(redis_process: RedisProcess) -> None:
    # Unsigned, no webhookId, no FIRECRAWL_WEBHOOK_SECRET: the token in the URL is the proof.
    settings = {"poll_min": 20.0, "poll_max": 20.0}
    firecrawl = {"webhook_style": "selfhosted", "scrape_delay": 2.0, "concurrency": 1}
    with polled_deployment(redis_process, firecrawl=firecrawl, settings=settings) as d:
        started = time.monotonic()
        job = d.wait(d.create({"provider": "firecrawl", "urls": urls(2)}), timeout=15)
        assert job["status"] == "completed"
        assert time.monotonic() - started < 10  # well before the 20 s poll interval
        assert d.stats(d.firecrawl)["GET /v2/batch/scrape/{id} 200"] == 2
        deadline = time.monotonic() + 5
        while not d.stats(d.firecrawl).get("webhook batch_scrape.completed 200"):
            assert time.monotonic() < deadline, d.stats(d.firecrawl)
            time.sleep(0.05)
