"""The CPU sampler behind ``WRIT_PROFILE_DIR`` and ``make bench-load --profile``: it counts where a
process spends CPU time, per named window, and the summary says which library and which of our
functions that time was in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from writ_common import profiling

BURNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from writ_common.profiling import CpuSampler, WINDOW_FILE

    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            sum(i * i for i in range(200))

    def nap(seconds):
        time.sleep(seconds)  # no CPU: no samples

    directory = Path(sys.argv[1])
    sampler = CpuSampler(directory, "burner", interval=0.002)
    sampler.start()
    burn(0.3)  # before any window: not kept
    (directory / WINDOW_FILE).write_text("busy")
    time.sleep(0.6)  # the watcher sees the label
    burn(0.5)
    nap(0.5)
    sampler.stop()
    """
)


def test_the_sampler_counts_cpu_time_in_the_window_it_was_spent_in(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", BURNER, str(tmp_path)], check=True, timeout=60)
    folded = list((tmp_path / "busy").glob("burner-*.folded"))
    assert len(folded) == 1
    counts = profiling.read_folded(folded[0])
    total = sum(counts.values())
    burning = sum(n for stack, n in counts.items() if any(f.endswith(":burn") for f in stack))
    napping = sum(n for stack, n in counts.items() if any(f.endswith(":nap") for f in stack))
    # 0.5 s of CPU at one sample per 2 ms: about 250 samples, nearly all in burn; sleeping costs none.
    assert total >= 100
    assert burning / total > 0.9
    assert napping <= 2
    assert not (tmp_path / profiling.IDLE).exists()  # the unnamed time before the window is dropped


def test_a_label_that_is_not_a_plain_name_is_taken_for_idle(tmp_path: Path) -> None:
    sampler = profiling.CpuSampler(tmp_path, "x")
    (tmp_path / profiling.WINDOW_FILE).write_text("../../etc")
    assert sampler._read_window() == profiling.IDLE


def test_frames_are_named_by_module_and_sorted_into_libraries() -> None:
    assert profiling.module_of("/x/.venv/lib/python3.11/site-packages/nats/aio/client.py") == "nats/aio/client"
    assert profiling.module_of("/work/libs/common/src/writ_common/service.py") == "writ_common/service"
    assert profiling.module_of("/usr/lib/python3.11/asyncio/events.py") == "asyncio/events"
    assert profiling.module_of("<frozen abc>") == "abc"
    assert profiling.module_of("<string>") == "generated"
    assert profiling.library_of("writ_ledger/views/store:ViewStore.apply") == "writ"
    assert profiling.library_of("nats/aio/client:Client._process_msg") == "nats-py"
    assert profiling.library_of("uvloop/__init__:run") == "asyncio"
    assert profiling.library_of("json/decoder:JSONDecoder.decode") == "stdlib"
    assert profiling.library_of("ulid/__init__:ULID.__init__") == "ulid"


def test_the_summary_gives_library_shares_and_the_nearest_function_of_ours(tmp_path: Path) -> None:
    main = "writ_registry/__main__:<module>;writ_common/service:run_service;asyncio/runners:Runner.run"
    lines = [
        f"{main};writ_common/service:Service.run_stage;writ_common/bus:append;nats/aio/client:Client.publish 6",
        f"{main};writ_common/service:Service.run_stage;writ_registry/domain:plan;jsonschema/validators:iter_errors 3",
        f"{main};nats/aio/client:Client._read_loop 1",
    ]
    (tmp_path / "registry-1.folded").write_text("\n".join(lines[:2]) + "\n")
    (tmp_path / "registry-2.folded").write_text(lines[2] + "\n")  # a restarted process: same service
    found = profiling.summary(tmp_path)
    registry = found["registry"]
    assert registry["samples"] == 10
    assert registry["libraries"] == {"nats-py": 0.7, "jsonschema": 0.3}
    assert registry["nearest_ours"] == {
        "writ_common/bus:append": 0.6,
        "writ_registry/domain:plan": 0.3,
        profiling.NOT_OURS: 0.1,
    }
