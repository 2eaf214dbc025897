"""Traces leave the plane over OTLP: one trace per intent, a span per stage, every service in it.

A plane of its own runs with the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a small
OTLP/HTTP receiver in this test (the collector's side of the protocol, decoded with the
OpenTelemetry protobufs), and one intent goes through it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from typer.testing import CliRunner

from cli_runner import INTENT_ID, TIME_SERVER
from waiting import eventually_sync
from writ.cli import app
from writ.runtime.processes import free_port
from writ.runtime.supervisor import SERVICES, Plane

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    attributes: dict[str, str]


class Receiver(ThreadingHTTPServer):
    """What an OpenTelemetry collector's OTLP/HTTP traces endpoint does, minus the forwarding."""

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), ReceiverHandler)
        self.spans: list[Span] = []
        self.paths: set[str] = set()
        self.lock = threading.Lock()


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.paths.add(self.path)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: a.value.string_value for a in span.attributes}
                        self.server.spans.append(
                            Span(resource.get("service.name", ""), span.name, span.trace_id.hex(), attributes)
                        )
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_one_intent_is_one_trace_across_the_five_services(
    receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    plane = Plane(tmp_path_factory.mktemp("otlp-plane") / "data", nats_port=free_port(), redis_port=free_port())
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    plane.service_env = {
        name: {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"} for name in SERVICES
    }
    with plane:
        plane.wait_ready(timeout=60.0)
        runner = CliRunner()
        env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}

        def writ(*args: str) -> str:
            result = runner.invoke(app, list(args), env=env)
            assert result.exit_code == 0, result.output
            return result.stdout

        writ("agent", "register", "traced-bot", "--owner", "tests")
        writ("server", "add", "time", "--", TIME_SERVER)
        writ("policy", "load", "--default")
        submitted = writ(
            "intent", "submit", "time/get_current_time", "--args", json.dumps({"timezone": "UTC"}),
            "--as", "traced-bot", "--wait",
        )  # fmt: skip
        found = INTENT_ID.search(submitted)
        assert found and "succeeded" in submitted, submitted
        intent_id = found.group(1)

        wanted = {f"writ-{name}" for name in SERVICES}

        def spans_of_intent() -> list[Span]:
            with receiver.lock:
                return [s for s in receiver.spans if s.attributes.get("writ.intent_id") == intent_id]

        def whole() -> bool | None:
            ours = spans_of_intent()
            return ({s.service for s in ours} >= wanted and any(s.name.startswith("ledger.") for s in ours)) or None

        with contextlib.suppress(AssertionError):  # the assertions below say what is missing
            eventually_sync(whole, 20, "spans from the five services")
        ours = spans_of_intent()

    assert receiver.paths == {"/v1/traces"}
    assert {s.service for s in ours} >= wanted, sorted((s.service, s.name) for s in ours)
    assert len({s.trace_id for s in ours}) == 1, sorted((s.trace_id, s.service, s.name) for s in ours)
    stages = {s.name for s in ours}
    for stage in (
        "identity.intent.submitted",
        "registry.intent.authenticated",
        "policy.intent.planned",
        "executor.intent.authorized",
    ):
        assert stage in stages, sorted(stages)
