"""Dify's knowledge API: the indexing status of a batch of documents, and what it adds up to.

What a real (1.13.3) server does, and this module allows for:
- the order of `data[]` changes between polls: documents are matched by `id`;
- `paused` is a hold, not an end; `cleaning` never appears; progress is not monotonic
  (`total_segments` grows while splitting and can drop after a resume);
- a document waiting again after a re-submit shows its previous run's counts and `error`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from receiver.errors import NotFound, RateLimited, Rejected, Unauthorized
from receiver.providers.base import (
    ProviderClient,
    error_message,
    json_object,
    path_part,
    raise_for_status,
    summary,
)

# Document statuses after which indexing does not move on its own.
COMPLETED, ERROR, PAUSED = "completed", "error", "paused"
TERMINAL = frozenset({COMPLETED, ERROR})
# The stages Dify moves a document through by itself (a real server never shows `cleaning`).
MOVING = ("waiting", "parsing", "cleaning", "splitting", "indexing")
# Every stage a document can be in, in the order a `stages` count lists them.
STAGES = (*MOVING, PAUSED, COMPLETED, ERROR)
# Batch states `summarize` reports.
RUNNING, FAILED = "running", "failed"


@dataclass(frozen=True)
class DocumentStatus:
    id: str
    indexing_status: str  # waiting, parsing, splitting, indexing, completed, error, paused
    error: str | None
    completed_segments: int
    total_segments: int
    # Unix seconds, or None.
    processing_started_at: int | None
    completed_at: int | None
    paused_at: int | None
    stopped_at: int | None


@dataclass(frozen=True)
class Summary:
    state: str  # running, completed or failed
    documents: int
    terminal: int  # completed or error
    completed_documents: int
    failed_documents: int
    paused: int
    segments_completed: int
    segments_total: int
    errors: dict[str, str]  # document id -> Dify's message, for documents in `error`
    # Stage -> documents in it, for the stages that hold any: STAGES in order, then any
    # status this module does not know, as Dify wrote it.
    stages: dict[str, int]
    moving: int  # documents in one of the MOVING stages

    @property
    def busy(self) -> bool:
        """Whether a document may move at any moment: one is moving, or paused (a resume
        comes whenever someone clicks it, and a re-split moves fast)."""
        return self.moving > 0 or self.paused > 0


class DifyClient(ProviderClient):
    name = "dify"

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        super().__init__(
            http, base_url, {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        )

    async def indexing_status(self, dataset_id: str, batch: str) -> list[DocumentStatus]:
        """GET /datasets/{dataset_id}/documents/{batch}/indexing-status: one per document."""
        path = f"/datasets/{_path_part(dataset_id)}/documents/{_path_part(batch)}/indexing-status"
        response = await self.request("GET", self.url(path))
        data = _json_object(response).get("data")
        if not isinstance(data, list):
            raise Rejected(
                "dify indexing status has no `data` list", body=response.text, reason="bad_answer"
            )
        return [_document(item, response) for item in data]


def summarize(docs: Sequence[DocumentStatus]) -> Summary:
    """Where a batch stands; an empty batch is still running, not completed."""
    completed = sum(d.indexing_status == COMPLETED for d in docs)
    failed = [d for d in docs if d.indexing_status == ERROR]
    if not docs or completed + len(failed) < len(docs):
        state = RUNNING
    else:
        state = FAILED if failed else COMPLETED
    return Summary(
        state=state,
        documents=len(docs),
        terminal=completed + len(failed),
        completed_documents=completed,
        failed_documents=len(failed),
        paused=sum(d.indexing_status == PAUSED for d in docs),
        segments_completed=sum(d.completed_segments for d in docs),
        segments_total=sum(d.total_segments for d in docs),
        errors={d.id: d.error or "indexing failed" for d in failed},
        stages=count_stages(docs),
        moving=sum(d.indexing_status in MOVING for d in docs),
    )


def count_stages(docs: Sequence[DocumentStatus]) -> dict[str, int]:
    """Stage -> documents in it, known stages first in their order; none for an empty batch."""
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc.indexing_status] = counts.get(doc.indexing_status, 0) + 1
    known = {stage: counts.pop(stage) for stage in STAGES if stage in counts}
    return known | dict(sorted(counts.items()))


def raise_for_dify_status(response: httpx.Response) -> None:
    """Turn Dify's non-success answer (`{code, message, status}`) into a ProviderError."""
    status = response.status_code
    if status < 300:
        return
    body, said = response.text, error_message(response)
    message = f"dify answered {status}: {said or summary(response)}"
    if status < 400:
        raise Rejected(message, status=status, body=body, reason="unexpected_redirect")
    if status == 400:
        raise Rejected(message, status=status, body=body, reason="invalid_param")
    if status == 401:
        raise Unauthorized(message, status=status, body=body, reason="unauthorized")
    if status == 403 and "rate limit" in said.lower():  # Dify Cloud's knowledge rate limit
        raise RateLimited(message, status=status, body=body, reason="rate_limited")
    if status == 403:
        raise Unauthorized(message, status=status, body=body, reason="forbidden")
    if status == 404:
        raise NotFound(message, status=status, body=body, reason=_not_found_reason(said))
    raise_for_status("dify", response)  # 429 with its retry-after, 5xx, the rest


def _not_found_reason(said: str) -> str:
    if said.startswith("Documents not found"):
        return "documents_not_found"
    if said.startswith("Dataset not found"):
        return "dataset_not_found"
    return "not_found"  # e.g. the HTML page for a dataset id that is not a UUID


def _json_object(response: httpx.Response) -> dict[str, Any]:
    raise_for_dify_status(response)
    return json_object("dify", response)


def _document(item: object, response: httpx.Response) -> DocumentStatus:
    if not isinstance(item, Mapping):
        raise Rejected(
            "dify indexing status item is not an object", body=response.text, reason="bad_answer"
        )
    doc_id, status, error = item.get("id"), item.get("indexing_status"), item.get("error")
    if not isinstance(doc_id, str) or not isinstance(status, str):
        raise Rejected(
            "dify indexing status item lacks id or status", body=response.text, reason="bad_answer"
        )
    return DocumentStatus(
        id=doc_id,
        indexing_status=status,
        error=error if isinstance(error, str) else None,
        completed_segments=_whole(item.get("completed_segments")) or 0,
        total_segments=_whole(item.get("total_segments")) or 0,
        processing_started_at=_whole(item.get("processing_started_at")),
        completed_at=_whole(item.get("completed_at")),
        paused_at=_whole(item.get("paused_at")),
        stopped_at=_whole(item.get("stopped_at")),
    )


def _whole(value: object) -> int | None:
    """An int from an int or a float (the spec says number; the server sends ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _path_part(value: str) -> str:
    return path_part("dify", value)
