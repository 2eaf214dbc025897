"""Policy service wiring: consumes intent.planned, publishes policy bundles.

The service is four cohesive parts over one folded :class:`~writ_policy.state.PolicyState`:
:class:`~writ_policy.decisions.Decisions` (the authorize stage, recheck),
:class:`~writ_policy.desk.ApprovalDesk` (requests waiting for people),
:class:`~writ_policy.loading.Bundles` (load, shadow, simulate) and
:class:`~writ_policy.controller.RolloutController` (canaries). :func:`build` creates and wires them.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from writ_common import subjects
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_common.stranded import sweep_stage
from writ_policy.controller import RolloutController
from writ_policy.decisions import Decisions
from writ_policy.desk import ApprovalDesk
from writ_policy.loading import Bundles
from writ_policy.ratelimit import RateLimiter
from writ_policy.state import PolicyState


def build(settings: WritSettings) -> Service:
    """Every part of the policy service, and every subscription, command and background task, in one place."""
    svc = Service("policy", settings)
    redis = aioredis.from_url(
        settings.resolved_redis_url(), **settings.redis_options(), socket_timeout=2.0, socket_connect_timeout=2.0
    )
    state = PolicyState()
    policies = svc.follow(subjects.POLICY_STREAM, state.apply)
    desk = ApprovalDesk(svc, state)  # follows the approver directory
    bundles = Bundles(svc, state, policies, desk)  # follows the tool catalog
    decisions = Decisions(svc, state, policies, RateLimiter(redis))
    rollouts = RolloutController(svc, state, policies, bundles)

    svc.on_startup(desk.start)
    svc.on_startup(rollouts.start)
    svc.on_shutdown(desk.stop)
    svc.on_shutdown(rollouts.stop)
    svc.on_shutdown(redis.aclose)
    # Nothing stranded: an open intent past its deadline ends expired, whatever held it up
    # (one with an unanswered call is the executor's to end).
    svc.sweep(sweep_stage)
    svc.consume_intents(subjects.intents_of_type("intent.planned"), decisions.on_planned)
    svc.command("decide_approval", desk.decide_approval)
    svc.command("list_approvals", desk.list_approvals)
    svc.command("show_approval", desk.show_approval)
    svc.command("load", bundles.load)
    svc.command("show", bundles.show)
    svc.command("approver_groups", desk.approver_groups)
    svc.command("recheck", decisions.recheck)
    svc.command("schema", bundles.schema)
    svc.command("simulate", bundles.simulate)
    svc.command("shadow_off", bundles.shadow_off)
    svc.command("rollout", rollouts.start_rollout)
    svc.command("rollout_status", rollouts.status)
    svc.command("rollout_abort", rollouts.abort)
    # The same, asked by an approver on its own subject: policy knows who asks from the subject.
    svc.approver_command("decide_approval", desk.decide_as)
    svc.approver_command("list_approvals", desk.list_mine)
    svc.approver_command("show_approval", desk.show_mine)
    svc.approver_command("approver_groups", desk.groups_mine)
    svc.command("ping", bundles.ping)
    return svc
