"""A policy that cannot mean what its author wrote is refused at load, naming the policy: a typo
in an attribute would otherwise load and silently never apply (Cedar skips what it cannot
evaluate), and an unguarded argument would error on every tool that does not take it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from scene import Scene

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


async def load(scene: Scene, cedar: str, tmp_path: Path) -> tuple[int, str]:
    path = tmp_path / "candidate.cedar"
    path.write_text(cedar)
    result = await asyncio.to_thread(scene.writ, "policy", "load", str(path))
    return result.exit_code, str(result.output)


async def test_a_forbid_with_a_misspelled_attribute_is_refused_at_load(scene: Scene, tmp_path: Path) -> None:
    before = await asyncio.to_thread(scene.writ, "policy", "show")
    code, output = await load(
        scene,
        '@id("allow-all") permit(principal, action, resource);\n'
        '@id("no-writes") forbid(principal, action, resource) when { !resource.raed_only };\n',
        tmp_path,
    )
    assert code != 0
    assert "invalid_policy" in output and "no-writes" in output and "raed_only" in output, output
    after = await asyncio.to_thread(scene.writ, "policy", "show")
    assert after.output == before.output, "the refused bundle changed nothing"


async def test_an_unguarded_argument_is_refused_with_how_to_guard_it(scene: Scene, tmp_path: Path) -> None:
    code, output = await load(
        scene,
        f'@id("big-rows") forbid(principal, action, resource) when {{ context.arguments.token == "x" }};\n'
        f'@id("rest") permit(principal, action, resource == Tool::"{scene.server}/count");\n',
        tmp_path,
    )
    assert code != 0 and "big-rows" in output and "has" in output, output
    code, output = await load(
        scene,
        '@id("big-rows") forbid(principal, action, resource) when '
        '{ context.arguments has token && context.arguments.token == "x" };\n'
        f'@id("rest") permit(principal, action, resource == Tool::"{scene.server}/count");\n',
        tmp_path,
    )
    assert code == 0, output
