"""Policy service wiring: consumes intent.planned, publishes policy bundles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg

from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import StaleAppend, append_control, last_on_subject
from writ_common.commands import CommandError
from writ_common.control import ControlFollower
from writ_common.envelope import StoredEvent, make_envelope
from writ_common.fold import IntentView
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_policy.domain import Bundle, PolicyError, bundle_from_event, compile_bundle, decide


class LoadPolicy(msgspec.Struct, kw_only=True):
    cedar: str


def build(settings: WritSettings) -> Service:
    svc = Service("policy", settings)
    current: list[Bundle] = []  # the last published bundle, if any
    follower: ControlFollower | None = None

    def apply(event: StoredEvent) -> None:
        bundle = bundle_from_event(event)
        if bundle is not None:
            current[:] = [bundle]

    async def startup() -> None:
        nonlocal follower
        follower = ControlFollower(svc.nc, subjects.POLICY_STREAM, apply)
        await follower.start()

    async def on_planned(trigger: StoredEvent, _raw: Msg) -> None:
        async def decide_intent(view: IntentView) -> list[ev.Payload]:
            if view.planned is None or view.authorized is not None or view.approval is not None:
                return []
            return [decide(view, current[0] if current else None, now=datetime.now(UTC))]

        await svc.run_stage(trigger, "authorize", decide_intent)

    async def load(body: dict[str, Any]) -> Any:
        cmd = msgspec.convert(body, LoadPolicy)
        try:
            bundle = compile_bundle(cmd.cedar)
        except PolicyError as exc:
            raise CommandError("invalid_policy", f"Cedar could not parse the bundle: {exc}") from exc
        published = ev.PolicyBundlePublished(policy_digest=bundle.digest, cedar=bundle.cedar, policy_ids=bundle.names)
        last = await last_on_subject(svc.js, subjects.POLICY_STREAM, subjects.POLICY_SUBJECT)
        previous = last.seq or 0 if last else 0
        try:
            # Fenced on the previous bundle so two operators loading at once cannot both win.
            await append_control(
                svc.js,
                subjects.POLICY_SUBJECT,
                make_envelope(published, producer=svc.producer),
                message_id=f"policy:{bundle.digest}:after:{previous}",
                expected_last_subject_seq=previous,
            )
        except StaleAppend as exc:
            raise CommandError("concurrent_update", "another bundle was loaded at the same moment; retry") from exc
        if follower is not None:
            await follower.ensure_fresh()
        return {"policy_digest": bundle.digest, "policy_ids": sorted(bundle.names.values())}

    async def show(_body: dict[str, Any]) -> Any:
        if follower is not None:
            await follower.ensure_fresh()
        if not current:
            raise CommandError("no_policy", "no policy bundle is loaded; load one with `writ policy load FILE`")
        bundle = current[0]
        return {"policy_digest": bundle.digest, "policy_ids": sorted(bundle.names.values()), "cedar": bundle.cedar}

    async def ping(_body: dict[str, Any]) -> Any:
        return {"service": svc.name, "policy_digest": current[0].digest if current else None}

    svc.on_startup(startup)
    svc.consume_intents(subjects.intents_of_type("intent.planned"), on_planned)
    svc.command("load", load)
    svc.command("show", show)
    svc.command("ping", ping)
    return svc
