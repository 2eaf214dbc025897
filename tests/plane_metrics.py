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


async def lost_progress_noticed(plane: Plane, service: str) -> float:
    """How often ``service`` found its consumer behind the progress it had seen (a consumer placed
    anew after its node's removal): consumers reset, and deliveries acked unhandled meanwhile."""
    resets = await metric_value(plane, service, "writ_consumers_restored_total", service=service)
    return resets + await metric_value(plane, service, "writ_replay_skipped_total", service=service)
