"""Executor service wiring: the one place that creates the executor's parts and wires them.

* :class:`execution.Execution`: consumes intent.authorized and makes the one call with outside
  effects (lease, fenced ``execution.started``, the call, its outcome), and ``reconcile``.
* :class:`tuner.ConcurrencyTuner`: each server's slots and the concurrency loop that moves them.
* :class:`admission_loop.AdmissionLoop`: records each route's admission limit moves as events,
  verifies each against its baseline, reverts the ones that made things worse.
* :class:`secret_commands.SecretCommands`: ``set_secret``, ``delete_secret``, ``list_secrets``.
* :class:`server_operations.ServerOperations`: ``discover`` for the registry, ``list_offered`` for
  the gateway; :class:`server_operations.ToolRefresh`: rediscovery when a server's tools change.
* :class:`resource_relay.ResourceRelay`: resource subscriptions kept across sessions and restarts,
  ``resources/updated`` to the agents holding the URI, list changes to every agent.

The rules they follow are pure, in ``domain.py``, ``tuning.py``, ``limiter.py``,
``admission_tuning.py``, ``failures.py`` and ``subscription_rules.py``.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_common.stranded import sweep_execution
from writ_executor.admission_loop import AdmissionLoop
from writ_executor.execution import ACK_WAIT, Execution
from writ_executor.known_servers import KnownServers
from writ_executor.lease import Leases
from writ_executor.resource_relay import ResourceRelay
from writ_executor.scrubbed_output import scrub_logs
from writ_executor.secret_commands import SecretCommands, Secrets
from writ_executor.secret_store import SecretStore
from writ_executor.server_operations import ServerOperations, ToolRefresh
from writ_executor.sessions import SessionPool
from writ_executor.tuner import ConcurrencyTuner


class Executor:
    """The executor's parts, sharing one session pool, one secret store and one catalog."""

    def __init__(self, svc: Service, settings: WritSettings) -> None:
        self.svc = svc
        key = settings.secrets_key.get_secret_value() if settings.secrets_key else None
        self.store = SecretStore(settings.service_dir("executor") / "secrets", key)
        self.secrets = Secrets(self.store)
        self.refresh = ToolRefresh(svc)
        self.pool = SessionPool(stderr=self.secrets.stderr, on_tools_changed=self.refresh.on_tools_changed)
        self.servers = KnownServers(svc)
        self.relay = ResourceRelay(svc, self.servers, self.secrets, self.pool)
        self.pool.on_notice = self.relay.on_notice
        self.tuner = ConcurrencyTuner(svc, settings)
        self.redis = aioredis.from_url(
            settings.resolved_redis_url(), **settings.redis_options(), socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self.execution = Execution(
            svc,
            settings,
            servers=self.servers,
            secrets=self.secrets,
            pool=self.pool,
            leases=Leases(self.redis, settings.instance, ttl_ms=int(ACK_WAIT * 1000)),
            tuner=self.tuner,
            relay=self.relay,
        )
        self.admission_loop = AdmissionLoop(svc, settings, self.execution.admission)
        self.secret_commands = SecretCommands(svc, self.store, self.servers)
        self.server_operations = ServerOperations(
            svc, self.servers, self.secrets, self.pool, on_listed=self.relay.listed
        )

    async def ping(self, _body: dict[str, Any]) -> Any:
        return {
            "service": self.svc.name,
            "servers": len(self.servers),
            "dead_letters": self.svc.dead_letters,
            "breakers": {name: b.state for name, b in self.execution.breakers.items()},
        }

    def wire(self) -> None:
        """Every subscription, command and background task of the executor, in one place."""
        scrub_logs(self.secrets.scrub_text)
        self.tuner.wire()
        self.admission_loop.wire()
        self.execution.wire()
        # Nothing stranded: an unanswered call past its deadline ends outcome_unknown (non-idempotent)
        # or expired (idempotent), named by its attempt as on_authorized would name it.
        self.svc.sweep(sweep_execution, occurrence=lambda view: view.last_attempt)
        self.secret_commands.wire()
        self.server_operations.wire()
        self.svc.command("ping", self.ping)
        self.relay.wire()
        self.svc.on_shutdown(self.refresh.cancel)
        self.svc.on_shutdown(self.pool.close)
        self.svc.on_shutdown(self.redis.aclose)


def build(settings: WritSettings) -> Service:
    svc = Service("executor", settings)
    Executor(svc, settings).wire()
    return svc
