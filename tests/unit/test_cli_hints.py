"""The CLI's first-hour hints: no data directory here, a relative program path made absolute, the
id rule shown whole in the help."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from writ.cli import app
from writ.cli.base import no_data_dir
from writ.cli.control import absolute_command
from writ_common.settings import WritSettings

pytestmark = pytest.mark.unit


def test_without_runtime_json_the_cause_is_the_missing_data_dir(tmp_path: Path) -> None:
    missing = no_data_dir(WritSettings(data_dir=tmp_path / ".writ"))
    assert missing is not None and missing.code == "no_data_dir"
    assert str(tmp_path / ".writ") in missing.message and "WRIT_DATA_DIR" in missing.message
    (tmp_path / ".writ").mkdir()
    (tmp_path / ".writ" / "runtime.json").write_text("{}")
    assert no_data_dir(WritSettings(data_dir=tmp_path / ".writ")) is None


def test_a_relative_program_path_is_registered_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "server").write_text("")
    monkeypatch.chdir(tmp_path)
    assert absolute_command(os.path.join("bin", "server")) == str(tmp_path / "bin" / "server")
    assert absolute_command("mcp-server-time") == "mcp-server-time"  # a name on PATH stays a name
    assert absolute_command(os.path.join("bin", "absent")) == os.path.join("bin", "absent")


@pytest.mark.parametrize(
    "command",
    [["agent", "register"], ["server", "add"], ["approver", "register"], ["secret", "set"]],
)
def test_the_help_shows_the_id_rule_whole(command: list[str]) -> None:
    """rich reads ``[a-z0-9]`` as markup and drops it: the help said ``Agent id: {0,62}``."""
    shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert shown.exit_code == 0, shown.output
    assert "[a-z0-9][a-z0-9_-]{0,62}" in shown.output
