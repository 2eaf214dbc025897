"""Reading a running plane's ``/metrics``, for the tiers that drive the supervised plane."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from writ.runtime.supervisor import Plane


async def metric_value(plane: Plane, process: str, name: str, /, **labels: str) -> float:
    """The sum of ``name``'s samples with ``labels`` on ``process``'s ``/metrics`` (0 if none)."""
    url = plane.metrics_url(process)
    assert url is not None, f"{process} has not reported its metrics port"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return sum(
        sample.value
        for family in text_string_to_metric_families(await asyncio.to_thread(scrape))
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
