"""``make conformance``: the official MCP conformance suite's server scenarios, run directly against
a conformance target server and through ``writ gateway --http`` in front of the same server, side by
side.

Installs the suite from npm (pinned: ``SUITE``) into ``.conformance/`` once; starts the target
(``tests/servers/conformance_everything.py``, streamable HTTP); runs every scenario (``--suite all``)
against it; starts an embedded plane on a temporary data directory with a permit-all policy,
registers the target and an agent, serves ``writ gateway --as AGENT --http``; runs the suite
again against the gateway. Prints each scenario's result both ways, the reason for every
difference (the failing check's own message, and for the ones a governance decision refuses on
purpose, why), and ends with ``conformance: direct P/N, through writ Q/N`` (N: the scenarios that
score at least one check). Exit status 0 when every scenario that passes directly passes through
Writ, except those listed in ``REFUSED_ON_PURPOSE`` (on purpose) and ``KNOWN_GAPS`` (not yet); 1
when another differs, or a known gap passes (the list must then shrink).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane

SUITE = "@modelcontextprotocol/conformance@0.1.13"
ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tests" / "servers" / "conformance_everything.py"
INSTALL_DIR = ROOT / ".conformance"
BIN = Path(sys.executable).parent
PERMIT_ALL = '@id("conformance-permit-all")\npermit(principal, action, resource);\n'
AGENT = "conformance"
SERVER = "everything"
# Scenarios a governance decision refuses on purpose through Writ, with the reason (also in README).
REFUSED_ON_PURPOSE: dict[str, str] = {}
# Scenarios that pass directly and not yet through Writ, each with what is missing (docs/gateway.md).
# Like the suite's own expected-failures baseline: one that starts passing must be taken off.
KNOWN_GAPS: dict[str, str] = {}
_RESULT_DIR = re.compile(r"server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: int
    failed: int
    failure: str  # the first failing check's id and message; "" when none failed

    @property
    def scored(self) -> bool:
        return self.passed + self.failed > 0

    @property
    def ok(self) -> bool:
        return self.scored and self.failed == 0


def install() -> Path:
    """The suite's CLI, installed from npm (pinned) into ``.conformance/`` unless it already is."""
    cli = INSTALL_DIR / "node_modules" / ".bin" / "conformance"
    manifest = INSTALL_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "package.json"
    version = SUITE.rsplit("@", 1)[1]
    if not (cli.exists() and json.loads(manifest.read_text()).get("version") == version):
        if shutil.which("npm") is None:
            raise SystemExit("make conformance needs Node.js and npm on PATH")
        INSTALL_DIR.mkdir(exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(INSTALL_DIR), "--no-audit", "--no-fund", "--no-save", SUITE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return cli


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until something answers HTTP at ``url`` (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing answered at {url} within {timeout:g}s") from None
            time.sleep(0.2)


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_suite(cli: Path, url: str, out: Path, log: Path) -> dict[str, Outcome]:
    """Every server scenario against ``url``: each one's checks, by scenario name."""
    with log.open("ab") as sink:
        subprocess.run(
            [str(cli), "server", "--suite", "all", "--url", url, "-o", str(out)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,  # it exits 1 when any scenario fails: the checks say which
            timeout=600,
        )
    outcomes: dict[str, Outcome] = {}
    for result in sorted(out.iterdir()):
        if (match := _RESULT_DIR.match(result.name)) is None or not (result / "checks.json").exists():
            continue
        checks = json.loads((result / "checks.json").read_text())
        failed = [c for c in checks if c.get("status") == "FAILURE"]
        first = f"{failed[0].get('id')}: {failed[0].get('errorMessage') or 'failed'}" if failed else ""
        passed = sum(c.get("status") == "SUCCESS" for c in checks)
        outcomes[match["scenario"]] = Outcome(passed, len(failed), first)
    return outcomes


def writ(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([str(BIN / "writ"), *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"writ {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def through_writ(cli: Path, target_url: str, work: Path) -> dict[str, Outcome]:
    """The suite against ``writ gateway --http`` on an embedded plane in front of the target."""
    with Plane(work / "data", nats_port=free_port(), redis_port=free_port()) as plane:
        plane.wait_ready(timeout=120)
        env = {**os.environ, "WRIT_DATA_DIR": str(plane.data_dir), "WRIT_NATS_URL": plane.nats_url}
        policy = work / "permit-all.cedar"
        policy.write_text(PERMIT_ALL)
        writ(env, "agent", "register", AGENT, "--owner", "conformance")
        writ(env, "server", "add", SERVER, "--url", target_url)
        writ(env, "policy", "load", str(policy))
        port = free_port()
        # The suite sends no bearer token: the gateway asks none here (loopback, a throwaway plane).
        gateway = ["gateway", "--as", AGENT, "--http", str(port), "--no-token"]
        with process([str(BIN / "writ"), *gateway], work / "gateway.log", env):
            url = f"http://127.0.0.1:{port}/mcp"
            wait_http(url)
            return run_suite(cli, url, work / "through-writ", work / "suite-writ.log")


def report(direct: dict[str, Outcome], gated: dict[str, Outcome]) -> tuple[int, int, int, list[str]]:
    """Print both results side by side; (direct passed, through writ passed, scored, regressions)."""
    names = [n for n in direct if direct[n].scored or (n in gated and gated[n].scored)]
    names += [n for n in gated if n not in direct and gated[n].scored]
    width = max(len(n) for n in names)
    print(f"\n{'scenario':{width}}  {'direct':>7}  {'writ':>7}  reason for a difference")
    regressions: list[str] = []
    for name in names:
        a, b = direct.get(name, Outcome(0, 0, "not run")), gated.get(name, Outcome(0, 0, "not run"))
        reason = ""
        if a.ok != b.ok:
            reason = REFUSED_ON_PURPOSE.get(name) or (b.failure if not b.ok else f"fails directly: {a.failure}")
            if name in KNOWN_GAPS:
                reason = f"{KNOWN_GAPS[name]} ({reason})"
            elif a.ok and name not in REFUSED_ON_PURPOSE:
                regressions.append(name)
        elif a.ok and name in KNOWN_GAPS:
            reason = "passes through writ now: take it off KNOWN_GAPS"
            regressions.append(name)
        print(f"{name:{width}}  {_cell(a):>7}  {_cell(b):>7}  {reason}")
    unscored = [n for n in direct if not direct[n].scored]
    if unscored:
        print(f"(not scored, no checks either way: {', '.join(unscored)})")
    return (
        sum(direct.get(n, Outcome(0, 0, "")).ok for n in names),
        sum(gated.get(n, Outcome(0, 0, "")).ok for n in names),
        len(names),
        regressions,
    )


def _cell(outcome: Outcome) -> str:
    return (
        "-"
        if not outcome.scored
        else f"{'ok' if outcome.ok else 'FAIL'} {outcome.passed}/{outcome.passed + outcome.failed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (results, logs) and print it")
    args = parser.parse_args()
    cli = install()
    work = Path(tempfile.mkdtemp(prefix="writ-conformance-"))
    try:
        port = free_port()
        target_url = f"http://127.0.0.1:{port}/mcp"
        with process([sys.executable, str(TARGET), str(port)], work / "target.log"):
            wait_http(target_url)
            started = time.monotonic()
            direct = run_suite(cli, target_url, work / "direct", work / "suite-direct.log")
            direct_s = time.monotonic() - started
            started = time.monotonic()
            gated = through_writ(cli, target_url, work)
            gated_s = time.monotonic() - started
        p, q, n, regressions = report(direct, gated)
        print(f"(suite {SUITE}; direct {direct_s:.1f}s, through writ {gated_s:.1f}s including the plane's start)")
        if args.keep:
            print(f"results and logs: {work}")
        print(f"conformance: direct {p}/{n}, through writ {q}/{n}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if regressions:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
