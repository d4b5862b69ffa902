"""What `receiver show` prints of a job, piped: its fields, its progress in its provider's
words, and its items named by the provider's unit. Jobs as `GET /jobs/{id}` shows them."""

from __future__ import annotations

import io
import re
from typing import Any

from rich.console import Console

from receiver.client.tables import print_job
from tests.client.frames import DIFY_DOCS, dify_snapshot


def shown(job: dict[str, Any], most: int | None = 50) -> str:
    out = io.StringIO()
    print_job(Console(file=out, width=200), job, most)
    return out.getvalue()


def field_line(output: str, name: str) -> str:
    found = re.search(rf"^{name} +(.*)$", output, re.M)
    assert found, output
    return found[1]


def test_show_prints_a_dify_jobs_progress_in_difys_words_and_its_documents() -> None:
    job = dify_snapshot(
        progress={"completed": 1, "failed": 1, "total": 2},
        stages={"indexing": 1},
        tasks=[
            {"id": DIFY_DOCS[1], "status": "completed"},
            {"id": DIFY_DOCS[0], "status": "error", "error": "Failed to load document."},
        ],
    )
    output = shown(job)
    progress = field_line(output, "progress")
    assert progress == "1/2 documents (1 failed) · segments 120/4000 · indexing 1"
    assert "\ndocuments (2): 1 completed, 1 error\n" in output
    assert "tasks (" not in output
    rows = output[output.index("documents (2)") :].splitlines()[2:]
    assert re.fullmatch(rf"{DIFY_DOCS[0]}\s+error\s+Failed to load document\.", rows[0]), rows


def test_show_names_a_firecrawl_jobs_items_pages() -> None:
    job = {
        "id": "aea08302796e383f6fcc",
        "provider": "firecrawl",
        "status": "running",
        "progress": {"completed": 2, "failed": 1, "total": 3},
        "external": {"batch_id": "b5954cba-7195-4b5e-ad78-c64f1f39230a"},
        "provider_status": "scraping",
        "documents": 2,
        "created_at": "2026-12-01T12:50:42.256+00:00",
        "updated_at": "2026-12-01T12:50:42.474+00:00",
        "tasks": [
            {"id": "0", "status": "done", "input": "https://example.com/0"},
            {"id": "1", "status": "failed", "input": "https://example.com/1", "error": "timeout"},
            {"id": "2", "status": "done", "input": "https://example.com/2"},
        ],
    }
    output = shown(job, most=2)
    assert field_line(output, "progress") == (
        "2/3 pages (1 failed) · firecrawl scraping · documents 2"
    )
    assert field_line(output, "documents") == "2"  # a count, a field like the others
    assert "\npages (3): 2 done, 1 failed\n" in output
    assert output.endswith("... and 1 more pages (--all lists them, --json too)\n")


def test_show_of_a_decodo_job_in_retry_says_so() -> None:
    job = {
        "id": "j1",
        "provider": "decodo",
        "status": "running",
        "progress": {"completed": 0, "failed": 0, "total": 1},
        "consecutive_failures": 2,
        "last_error": "decodo unreachable: ConnectError",
        "tasks": [{"id": "7405", "status": "pending", "input": "https://example.com"}],
    }
    output = shown(job)
    assert field_line(output, "progress") == (
        "0/1 tasks · retrying: decodo unreachable: ConnectError (2 in a row)"
    )
    assert "\ntasks (1): 1 pending\n" in output


def test_show_of_a_provider_this_version_does_not_know_counts_items() -> None:
    job = {
        "id": "j9",
        "provider": "newcomer",
        "status": "completed",
        "progress": {"completed": 1, "failed": 0, "total": 1},
        "tasks": [{"id": "a", "status": "done"}],
    }
    output = shown(job)
    assert field_line(output, "progress") == "1/1 items"
    assert "\nitems (1): 1 done\n" in output
