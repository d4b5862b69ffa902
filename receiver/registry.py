"""Every provider receiver knows, by name (see `receiver.jobs.base.Provider`).

Adding a provider is one module under `receiver/jobs/` defining its `PROVIDER`, and one
line here.
"""

from __future__ import annotations

from receiver.jobs import decodo, dify, firecrawl
from receiver.jobs.base import Context, Provider, Workflow

PROVIDERS: dict[str, Provider] = {
    entry.name: entry for entry in (decodo.PROVIDER, firecrawl.PROVIDER, dify.PROVIDER)
}


def workflows(context: Context) -> dict[str, Workflow]:
    """Each provider's workflow, built for one process."""
    return {name: entry.workflow(context) for name, entry in PROVIDERS.items()}
