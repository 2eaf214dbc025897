"""Policy's folded view of its own stream: the published bundle, the shadow beside it, the canary
and its candidate. Pure: :meth:`PolicyState.apply` folds one event, the rest reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from writ_common import events as ev
from writ_common.envelope import StoredEvent
from writ_policy.domain import Bundle, bundle_from_event, compile_bundle
from writ_policy.rollout import Rollouts, apply_rollout_event, in_slice


@dataclass(slots=True)
class PolicyState:
    """What the policy stream says now, compiled once per bundle."""

    current: Bundle | None = None  # the last published bundle, if any
    shadow: Bundle | None = None  # the candidate evaluated beside it, if published and not stopped
    rollouts: Rollouts = field(default_factory=Rollouts)  # the canary, folded from the stream
    candidates: dict[str, Bundle] = field(default_factory=dict)  # a rollout's candidate, by digest

    def apply(self, event: StoredEvent) -> None:
        """Fold one policy-stream event."""
        bundle = bundle_from_event(event)
        if bundle is not None:
            self.current = bundle
        match event.payload:
            case ev.PolicyShadowPublished():
                self.shadow = compile_bundle(event.payload.cedar)
            case ev.PolicyShadowStopped() if self.shadow and self.shadow.digest == event.payload.policy_digest:
                self.shadow = None
            case ev.PolicyRolloutStarted():
                self.candidates = {event.payload.candidate_digest: compile_bundle(event.payload.cedar)}
            case _:
                pass
        apply_rollout_event(self.rollouts, event)

    def enforced_for(self, agent_id: str | None) -> Bundle | None:
        """The bundle that decides for ``agent_id``: a rollout's candidate inside its slice (or for
        everyone once promoted, until the promotion is published), the published bundle elsewhere."""
        rollout = self.rollouts.latest
        if rollout is not None and (
            rollout.promotion_pending or (rollout.active and agent_id and in_slice(rollout.plan, agent_id))
        ):
            return self.candidates.get(rollout.plan.candidate_digest)
        return self.current

    @property
    def current_digest(self) -> str | None:
        return self.current.digest if self.current else None
