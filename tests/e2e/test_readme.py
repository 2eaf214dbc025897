"""What a new user copies runs as printed: the README's tour (every `writ` line, in order, with the
exit code its comment promises) and every ```python block of README.md and docs/*.md, against the
session plane, from a directory whose `.writ` is the plane's data directory."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import Writ
from writ.runtime.supervisor import Plane
from writ_common.ids import derive_intent_id

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
TOUR = re.compile(r"<!-- tour -->\n```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXIT_1 = "# exit 1"
AGENT, APPROVER = "hello-bot", "carol"


def tour_lines() -> list[str]:
    found = TOUR.search((ROOT / "README.md").read_text())
    assert found, "README.md has no <!-- tour --> block"
    return [line for line in found.group(1).splitlines() if line.startswith("writ ")]


def python_blocks() -> list[tuple[str, str]]:
    return [
        (f"{doc.relative_to(ROOT)}#{n}", code)
        for doc in DOCS
        for n, (lang, code) in enumerate(FENCE.findall(doc.read_text()))
        if lang == "python"
    ]


def test_the_readme_keeps_its_two_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert len(readme.splitlines()) <= 200
    for doc in DOCS:
        for link in re.findall(r"\]\((?!https?://)([^)#]+)", doc.read_text()):
            target = (doc.parent / link).resolve()
            assert target.is_relative_to(ROOT) and target.exists(), f"{doc.name}: {link} is not in the repository"


@pytest.fixture(scope="module")
def toured(plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the tour; return a directory whose `.writ` is the plane's data directory."""
    from typer.testing import CliRunner

    from writ.cli import app

    runner = CliRunner()
    env = {"WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url, "COLUMNS": "200"}
    here = Path.cwd()
    os.chdir(ROOT)  # the tour names .venv/bin/mcp-server-time and examples/ relative to the checkout
    try:
        for line in tour_lines():
            command, _, comment = line.partition("  #")
            expected = 1 if comment.strip().startswith(EXIT_1.removeprefix("# ")) else 0
            done = runner.invoke(app, shlex.split(command)[1:], env=env)
            assert done.exit_code == expected, f"{line}\n{done.output}"
    finally:
        os.chdir(here)
    home = tmp_path_factory.mktemp("user")
    (home / ".writ").symlink_to(plane.data_dir)
    return home


def test_the_tour_runs_as_printed(toured: Path, writ: Writ) -> None:
    approved = writ("intent", "status", derive_intent_id(AGENT, "tour-1"))
    assert approved.exit_code == 0 and "succeeded" in approved.stdout, approved.output


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[w for w, _ in python_blocks()])
def test_each_python_snippet_runs_as_printed(toured: Path, writ: Writ, where: str, code: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRIT_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=toured, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"
    assert "awaits" in done.stdout or "succeeded" in done.stdout, done.stdout
    # Leave no request pending for the other tests' approvers of `operators`.
    for key in ("hello/convert-1", "hello/convert-2"):
        writ("approvals", "approve", derive_intent_id(AGENT, key), "--as", APPROVER)
