"""Where a service's CPU goes: a sampling profiler on the process's CPU time (``WRIT_PROFILE_DIR``).

Every ``INTERVAL`` of CPU time the process spends (user and system, ``ITIMER_PROF``), the kernel
sends SIGPROF and the handler counts the Python stack it interrupted. Time in C (msgspec, SQLite,
Cedar, a socket call) counts for the Python frame that called it. A wall-clock sampler (py-spy)
over-charges whatever a process was doing when the scheduler took the core away, which on two
busy cores is mostly a socket write; a tracing profiler (cProfile) slowed the plane from 50 to 22
calls/s and charges every Python call its own overhead. Sampling CPU time costs about 1 %.

Samples are kept per window: the label written in ``<dir>/window`` (``make bench-load --profile``
writes one per load level). When the label changes, the counts so far go to
``<dir>/<old label>/<service>-<pid>.folded`` and counting starts afresh; on stop, the current
window is written too. ``.folded`` is the collapsed-stack format (``frame;frame;... count``) that
flamegraph.pl, speedscope and inferno read. :func:`summary` reads a window back.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sys
import threading
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

INTERVAL = 0.005  # seconds of CPU time between samples
WATCH_EVERY = 0.25  # seconds between looks at the window label
WINDOW_FILE = "window"
IDLE = "idle"  # the label before anyone names a window

# Where a file's module path starts: our packages, then the installed ones, then the stdlib.
_MODULE_ROOTS = re.compile(r"(?:.*/src/|.*/site-packages/|.*/lib/python3\.\d+/)(.*)\.py$")
_LIBRARIES = {
    "asyncio": "asyncio",
    "uvloop": "asyncio",
    "nats": "nats-py",
    "faststream": "faststream",
    "mcp": "mcp",
    "anyio": "mcp",
    "httpx": "mcp",
    "httpcore": "mcp",
    "cedarpy": "cedar",
    "sqlite3": "sqlite",
    "msgspec": "msgspec",
    "pydantic": "pydantic",
    "opentelemetry": "telemetry",
    "prometheus_client": "telemetry",
    "logging": "logging",
    "redis": "redis",
}


def module_of(filename: str) -> str:
    """``.../site-packages/nats/aio/client.py`` -> ``nats/aio/client``; ``<frozen abc>`` -> ``abc``;
    code compiled at run time (``<string>``: dataclass and msgspec-made methods) -> ``generated``."""
    if filename.startswith("<frozen "):
        return filename.removeprefix("<frozen ").removesuffix(">").replace(".", "/")
    if filename.startswith("<"):
        return "generated"
    found = _MODULE_ROOTS.match(filename)
    return found.group(1) if found else Path(filename).stem


def frame_label(code: CodeType) -> str:
    return f"{module_of(code.co_filename)}:{code.co_qualname}"


def library_of(label: str) -> str:
    """The library a frame belongs to: ours (``writ``), a named dependency, or ``stdlib``."""
    top = label.partition(":")[0].partition("/")[0]
    if top.startswith("writ"):
        return "writ"
    if top in _LIBRARIES:
        return _LIBRARIES[top]
    return "stdlib" if top in sys.stdlib_module_names else top


class CpuSampler:
    """Counts this process's Python stacks, one per ``INTERVAL`` of CPU time, per window."""

    def __init__(self, directory: Path, name: str, interval: float = INTERVAL) -> None:
        self.directory = directory
        self.name = name
        self.interval = interval
        self.counts: collections.Counter[tuple[CodeType, ...]] = collections.Counter()
        self.window = IDLE
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cpu-sampler", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.window = self._read_window()
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        self._watcher.start()

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        self._stop.set()
        self.dump(self.window)

    def _sample(self, _signum: int, frame: FrameType | None) -> None:
        # The handler runs on the main thread between two bytecodes: the frame is where it was.
        stack: list[CodeType] = []
        while frame is not None:
            stack.append(frame.f_code)
            frame = frame.f_back
        self.counts[tuple(reversed(stack))] += 1

    def _read_window(self) -> str:
        try:
            label = (self.directory / WINDOW_FILE).read_text().strip()
        except OSError:
            return IDLE
        return label if re.fullmatch(r"[\w.@+-]{1,64}", label) else IDLE

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY):
            label = self._read_window()
            if label != self.window:
                previous, self.window = self.window, label
                self.dump(previous)

    def dump(self, label: str) -> None:
        """Write the window's counts (``<dir>/<label>/<service>-<pid>.folded``) and start afresh."""
        counts, self.counts = self.counts, collections.Counter()
        if label == IDLE or not counts:
            return
        folded: collections.Counter[str] = collections.Counter()
        for stack, n in counts.items():
            folded[";".join(frame_label(code) for code in stack)] += n
        out = self.directory / label
        out.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{stack} {n}\n" for stack, n in folded.most_common())
        (out / f"{self.name}-{os.getpid()}.folded").write_text(lines)


NOT_OURS = "(event loop, bus client)"


def _is_ours_below_main(label: str) -> bool:
    # The entry points hold every stack: a sample under them alone is the loop's, not theirs.
    return library_of(label) == "writ" and not label.endswith(("run_service", ":<module>", "serve_forever"))


def read_folded(path: Path) -> collections.Counter[tuple[str, ...]]:
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[tuple(stack.split(";"))] += int(n)
    return counts


def summary(window: Path, top: int = 8) -> dict[str, dict[str, Any]]:
    """Per service in a window: its samples; the share of each library at the leaf (where the CPU
    was spent, C time counted for its Python caller); and per function of ours, the share whose
    nearest function of ours it is (what it did itself or through the libraries it called; the
    samples with none are the event loop's and the bus client's own work)."""
    out: dict[str, dict[str, Any]] = {}
    by_service: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(collections.Counter)
    for path in sorted(window.glob("*.folded")):
        by_service[path.stem.rpartition("-")[0]].update(read_folded(path))
    for service, counts in sorted(by_service.items()):
        total = sum(counts.values())
        libraries: collections.Counter[str] = collections.Counter()
        nearest: collections.Counter[str] = collections.Counter()
        for stack, n in counts.items():
            libraries[library_of(stack[-1])] += n
            nearest[next((f for f in reversed(stack) if _is_ours_below_main(f)), NOT_OURS)] += n
        out[service] = {
            "samples": total,
            "libraries": {lib: round(n / total, 3) for lib, n in libraries.most_common()},
            "nearest_ours": {label: round(n / total, 3) for label, n in nearest.most_common(top)},
        }
    return out
