"""Decodo's Web Scraping API, asynchronous v3: submit tasks, read status and results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from receiver.errors import Rejected
from receiver.providers.base import ProviderClient, json_object, path_part, raise_for_status

# Items in one POST /v3/task/batch.
BATCH_LIMIT = 3000
# Task statuses Decodo reports.
PENDING, DONE, FAULTED = "pending", "done", "faulted"


@dataclass(frozen=True)
class SubmittedTask:
    id: str
    input: str  # the URL or query


class DecodoClient(ProviderClient):
    name = "decodo"

    def __init__(self, http: httpx.AsyncClient, base_url: str, auth: str) -> None:
        super().__init__(
            http, base_url, {"Authorization": f"Basic {auth}", "Accept": "application/json"}
        )

    async def submit_task(self, params: Mapping[str, Any]) -> SubmittedTask:
        """POST /v3/task with one `url` or `query`."""
        response = await self.request("POST", self.url("/v3/task"), json=dict(params))
        raise_for_status(self.name, response)
        task = _json_object(response)
        return _submitted(task, params)

    async def submit_batch(
        self, params: Mapping[str, Any], key: str, items: Sequence[str]
    ) -> list[SubmittedTask]:
        """POST /v3/task/batch with `key` ("url" or "query") holding the list of items."""
        body = {**params, key: list(items)}
        response = await self.request("POST", self.url("/v3/task/batch"), json=body)
        raise_for_status(self.name, response)
        batch = _json_object(response)
        queries = batch.get("queries")
        if not isinstance(queries, list):
            raise Rejected("decodo batch answer has no `queries` list", body=response.text)
        return [_submitted(task, body) for task in queries if isinstance(task, dict)]

    async def get_task(self, task_id: str) -> dict[str, Any]:
        """GET /v3/task/{id}: the task with its `status` (pending, done, faulted)."""
        response = await self.request("GET", self.url(f"/v3/task/{_task_part(task_id)}"))
        raise_for_status(self.name, response)
        return _json_object(response)

    async def get_results(self, task_id: str) -> bytes | None:
        """GET /v3/task/{id}/results: the raw JSON body, or None while not ready (204)."""
        url = self.url(f"/v3/task/{_task_part(task_id)}/results")
        response = await self.request("GET", url)
        raise_for_status(self.name, response)
        if response.status_code == 204 or not response.content:
            return None
        _json_object(response)  # a body we cannot parse is not results
        return response.content


def _json_object(response: httpx.Response) -> dict[str, Any]:
    return json_object("decodo", response)


def _task_part(task_id: str) -> str:
    """A task id (from Decodo's answer, or a callback) as one path segment, quoted; one that
    could leave its segment (/, ?, #, \\, ..) is Rejected, reason bad_id."""
    return path_part("decodo task", task_id)


def _submitted(task: Mapping[str, Any], params: Mapping[str, Any]) -> SubmittedTask:
    task_id = task.get("id") or task.get("task_id")
    if task_id is None:
        raise Rejected("decodo answered a task without an id")
    item = task.get("url") or task.get("query") or params.get("url") or params.get("query") or ""
    return SubmittedTask(str(task_id), item if isinstance(item, str) else "")
