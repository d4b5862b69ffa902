"""Every provider receiver knows, by name: one entry each (see `receiver.jobs.base.Provider`).

Adding a provider is one module under `receiver/jobs/` defining its `PROVIDER`, and one
line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from receiver import display
from receiver.display import Display


@dataclass(frozen=True)
class _Entry:  # placeholder until the registry holds the providers' full entries
    name: str
    display: Display


PROVIDERS = {
    "decodo": _Entry("decodo", Display("tasks", display.decodo)),
    "firecrawl": _Entry("firecrawl", Display("pages", display.firecrawl)),
    "dify": _Entry("dify", Display("documents", display.dify)),
}
