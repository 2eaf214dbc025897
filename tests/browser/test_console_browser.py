"""The console in a real browser (headless Chromium) against the session's embedded plane: an
approver imports a key file, sees a request appear, a tampered decision is refused on the page,
the approval is signed in the page and the intent runs; an approver outside the group never
sees it; an analyst with a summary token finds a denied intent and never sees argument values."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from playwright.async_api import Browser, Page, Route, expect

from writ.keys import write_new_key
from writ.runtime.supervisor import Plane
from writ.sdk import WritAgent, wait_receipt
from writ_common import commands
from writ_common.signing import generate_key, public_key_b64

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# WRIT_CONSOLE_SCREENSHOTS=1 makes the tests refresh docs/console/*.png (linked from README).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
COMMENT = "checked ✓ — «ticket 42»"  # beyond ASCII: the page's canonical JSON must match the server's
TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class Scene:
    url: str
    nc: Client
    agent: WritAgent
    server: str
    olga: tuple[str, Path]  # in the group that decides append_row
    finn: tuple[str, Path]  # in another group
    summary_token: str
    full_token: str


def policy(server: str, group: str) -> str:
    call = 'permit(principal, action == Action::"call_tool", resource)'
    return (
        f'@id("read-only-tools")\n{call} when {{ resource.read_only }};\n'
        f'@id("append-needs-ops") @approval("{group}") @quorum("1")\n'
        f'{call} when {{ resource.server == "{server}" && resource.name == "append_row" }};\n'
    )


async def approver(nc: Client, name: str, group: str, home: Path) -> tuple[str, Path]:
    key = generate_key()
    await commands.call(
        nc, "identity", "register_approver", {"approver_id": name, "public_key": public_key_b64(key), "groups": [group]}
    )
    path = home / f"{name}.key"
    write_new_key(path, key)
    return name, path


async def token(nc: Client, name: str, scope: str) -> str:
    value = "wv_" + secrets.token_urlsafe(24)
    digest = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    await commands.call(nc, "identity", "issue_reader_token", {"name": name, "token_hash": digest, "scope": scope})
    return value


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scene(
    plane: Plane,
    tmp_path_factory: pytest.TempPathFactory,
    faulty_mcp: Callable[[Path], tuple[list[str], dict[str, str]]],
) -> AsyncIterator[Scene]:
    suffix = uuid.uuid4().hex[:8]
    home = tmp_path_factory.mktemp("console")
    nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        server = f"console-{suffix}"
        argv, env = faulty_mcp(home / "faulty.sqlite3")
        await commands.call(
            nc, "registry", "add_server", {"name": server, "command": argv[0], "args": argv[1:], "env": env}, 75.0
        )
        group = f"ops-{suffix}"
        await commands.call(nc, "policy", "load", {"cedar": policy(server, group)})
        agent_key = generate_key()
        agent_id = f"console-agent-{suffix}"
        await commands.call(
            nc, "identity", "register_agent", {"agent_id": agent_id, "public_key": public_key_b64(agent_key)}
        )
        yield Scene(
            url=f"http://127.0.0.1:{plane.views_port}",
            nc=nc,
            agent=WritAgent(nc, agent_id, agent_key),
            server=server,
            olga=await approver(nc, f"olga-{suffix}", group, home),
            finn=await approver(nc, f"finn-{suffix}", f"fin-{suffix}", home),
            summary_token=await token(nc, f"summary-{suffix}", "summary"),
            full_token=await token(nc, f"full-{suffix}", "full"),
        )
    finally:
        await nc.close()


async def open_console(browser: Browser, url: str) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []  # script errors (a refused request's HTTP status is not one)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url + "/console/")
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def snap(page: Page, name: str) -> None:
    if os.environ.get("WRIT_CONSOLE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


async def import_key(page: Page, who: tuple[str, Path]) -> None:
    await page.get_by_label("Approver id").fill(who[0])
    await page.get_by_label("Key file").set_input_files(who[1])
    await page.get_by_role("button", name="Import key").click()
    await expect(page.locator("#key-who")).to_have_text(who[0])


async def test_an_approver_signs_in_the_page_and_the_intent_runs(browser: Browser, scene: Scene) -> None:
    page = await open_console(browser, scene.url)
    await import_key(page, scene.olga)
    outsider = await open_console(browser, scene.url)
    await import_key(outsider, scene.finn)

    marker = f"row-{uuid.uuid4().hex[:6]}"
    submission = await scene.agent.submit(f"{scene.server}/append_row", {"token": marker})
    card = page.locator(f'li.card[data-intent="{submission.intent_id}"]')
    await expect(card).to_be_visible()  # appeared without a reload
    await expect(card).to_contain_text(marker)
    await expect(card).to_contain_text("append-needs-ops")
    await expect(card).to_contain_text("0 of 1")
    await snap(page, "approvals")

    # In flight, a decision whose signed comment was changed is refused, and the page says why.
    async def tamper(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        await route.continue_(post_data=json.dumps({**body, "comment": body["comment"] + "!"}))

    await page.route("**/decision", tamper)
    await card.get_by_label("Comment (signed with the decision)").fill(COMMENT)
    await card.get_by_role("button", name="Approve").click()
    await expect(card.locator(".outcome")).to_contain_text("refused: bad_signature")
    await page.unroute("**/decision")

    await card.get_by_role("button", name="Approve").click()
    await expect(card.locator(".outcome")).to_contain_text("authorized")
    await snap(page, "approved")
    receipt = await wait_receipt(scene.nc, submission.intent_id, timeout=30)
    assert receipt.status == "succeeded", receipt
    assert receipt.approvers == [scene.olga[0]]

    # The approver outside the group was polling all along and never saw it.
    await expect(outsider.locator("#inbox-status")).to_contain_text("pending")
    assert await outsider.locator(f'li.card[data-intent="{submission.intent_id}"]').count() == 0
    assert page.errors == [] and outsider.errors == []  # type: ignore[attr-defined]
    await page.context.close()
    await outsider.context.close()


async def test_a_summary_token_finds_a_denied_intent_and_sees_no_values(browser: Browser, scene: Scene) -> None:
    secret = f"value-{uuid.uuid4().hex}"
    denied = await scene.agent.submit(f"{scene.server}/slow", {"seconds": 0, "token": secret})
    receipt = await wait_receipt(scene.nc, denied.intent_id, timeout=30)
    assert receipt.status == "denied", receipt

    page = await open_console(browser, scene.url)
    await page.get_by_role("button", name="Intents").click()
    await page.get_by_label("Views token").fill(scene.summary_token)
    await page.get_by_role("button", name="Use token").click()
    await page.get_by_label("Agent", exact=True).fill(scene.agent.agent_id)
    await page.get_by_label("Status", exact=True).select_option("denied")
    await page.get_by_role("button", name="Search").click()
    row = page.locator(f'tr[data-intent="{denied.intent_id}"]')
    await expect(row).to_be_visible()
    await row.click()
    detail = page.locator("#intent-detail")
    await expect(detail).to_contain_text("summary token")
    await expect(detail).to_contain_text("Timeline")
    await expect(detail).to_contain_text("✓ ledger signature")
    await expect(detail).to_contain_text("✓ hash")
    assert secret not in await page.content()
    await snap(page, "intent-summary")

    # The same page with a full token does show the value: the check above can fail.
    await page.get_by_label("Views token").fill(scene.full_token)
    await page.get_by_role("button", name="Use token").click()
    await row.click()
    await expect(detail).to_contain_text(secret)
    await page.get_by_role("button", name="Stats").click()
    await expect(page.locator("#stats-charts svg").first).to_be_visible()
    await snap(page, "stats")
    assert page.errors == []  # type: ignore[attr-defined]
    await page.context.close()
