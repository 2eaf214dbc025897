"""The layers hold by construction: the contract imports only its codecs and crypto, the SDK only
the contract and a NATS client, and the services' rules (domain.py) no I/O at all. Read from the
source (every import, also inside functions), so a shortcut fails here before it ships."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "libs" / "contract" / "src"
SDK = ROOT / "sdk" / "src"
KIT = ROOT / "libs" / "common" / "src"
STDLIB = set(sys.stdlib_module_names)
# What a rule may not touch: the network, the disk, processes, the clock's sleep, the bus and stores.
IO = {"nats", "faststream", "redis", "sqlite3", "mcp", "asyncio", "socket", "subprocess", "httpx", "starlette"}
IO |= {"uvicorn", "urllib", "aiohttp", "nkeys", "shutil", "signal", "threading"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module in ("writ_common", "writ"):  # `from writ_common import events`
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules_of(src: Path) -> set[str]:
    return {".".join(p.relative_to(src).with_suffix("").parts) for p in src.rglob("*.py")}


def python_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def outside(path: Path, allowed_third_party: set[str], allowed_own: set[str]) -> list[str]:
    bad = []
    for name in sorted(imports(path)):
        top = name.split(".")[0]
        if top in ("writ_common", "writ"):
            if "." in name and name not in allowed_own and name.rsplit(".", 1)[0] not in allowed_own:
                bad.append(name)
        elif top not in STDLIB and top != "__future__" and top not in allowed_third_party:
            bad.append(name)
    return bad


@pytest.mark.parametrize("path", python_files(CONTRACT), ids=lambda p: p.name)
def test_the_contract_imports_only_its_codecs_and_crypto(path: Path) -> None:
    assert outside(path, {"msgspec", "rfc8785", "nacl", "ulid"}, modules_of(CONTRACT)) == []


@pytest.mark.parametrize("path", python_files(SDK), ids=lambda p: p.name)
def test_the_sdk_imports_only_the_contract_and_a_nats_client(path: Path) -> None:
    third_party = {"msgspec", "rfc8785", "nacl", "ulid", "nats", "nkeys", "opentelemetry"}
    assert outside(path, third_party, modules_of(CONTRACT) | modules_of(SDK)) == []


RULES = sorted([*ROOT.glob("services/*/src/*/domain.py"), *ROOT.glob("services/*/src/*/*_rules.py")])


@pytest.mark.parametrize("path", RULES, ids=lambda p: f"{p.parent.name}.{p.stem}")
def test_a_services_rules_import_no_io(path: Path) -> None:
    kit_io = {m for m in modules_of(KIT) | modules_of(SDK) if m.split(".")[-1] not in ("stranded", "faults")}
    touched = sorted(
        name for name in imports(path) if name.split(".")[0] in IO or name in kit_io or name.rsplit(".", 1)[0] in kit_io
    )
    assert touched == []


def test_the_layers_are_where_the_layout_says() -> None:
    assert RULES, "no services/*/src/*/domain.py found"
    assert {"writ_common.events", "writ_common.topology", "writ_common.receipts"} <= modules_of(CONTRACT)
    assert {"writ.sdk", "writ.approver", "writ_common.bus"} <= modules_of(SDK)
