"""docs/reference/ is generated from the code: a setting or CLI option cannot land undocumented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from writ import docsgen
from writ.cli import app
from writ_common.settings import WritSettings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(docsgen.pages()))
def test_reference_page_matches_the_code(name: str) -> None:
    on_disk = (REPO / docsgen.REFERENCE_DIR / name).read_text()
    assert on_disk == docsgen.pages()[name], f"docs/reference/{name} is out of date: run `make docs`"


def test_every_setting_says_what_it_is_for() -> None:
    undocumented = [name for name, field in WritSettings.model_fields.items() if not field.description]
    assert undocumented == []


def test_every_command_says_what_it_does() -> None:
    def silent(command: Any, path: str) -> list[str]:
        found = [] if (command.help or "").strip() else [path]
        for name, sub in getattr(command, "commands", {}).items():
            found += silent(sub, f"{path} {name}")
        return found

    assert silent(typer.main.get_command(app), "writ") == []


def test_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    assert docsgen.main([str(tmp_path)]) == 0
    assert docsgen.main([str(tmp_path), "--check"]) == 0
    (tmp_path / "cli.md").write_text("stale\n")
    assert docsgen.main([str(tmp_path), "--check"]) == 1
