"""The executor's own outputs that could carry a secret: a stdio tool server's stderr, and log lines.

A tool server started with a secret in its environment may print it (a debug dump of its
config, a traceback); its stderr would otherwise go straight into the executor's log. Both are
passed through the current redaction before they are written. Stderr is read line by line, so
lines that could be the start of a multi-line secret (a PEM block) are held back until the next
line says whether the value is complete, and then scrubbed together.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import select
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO

Scrub = Callable[[str], str]

IDLE_FLUSH_S = 1.0  # how long held-back lines wait for the rest of a secret before they are written
CHUNK = 65536


class StreamScrubber(Protocol):
    """What the stderr pump needs of a redactor (``redaction.Redactor`` is one)."""

    def text(self, text: str) -> str: ...

    def split(self, text: str) -> tuple[str, str]: ...


@contextlib.contextmanager
def scrubbed_pipe(current: Callable[[], StreamScrubber], sink: TextIO | None = None) -> Iterator[TextIO]:
    """A file to hand a child process as its stderr: scrubbed with ``current()`` (the latest
    redactor), then written to ``sink``, line by line. Lines that could be the start of a
    multi-line secret are held back until the next line completes it (then the value is scrubbed
    whole) or rules it out, or until the child has been quiet for ``IDLE_FLUSH_S`` (then they are
    written scrubbed line by line, so a quiet server's last lines still reach the log).

    The child needs a real descriptor, so this is an OS pipe read by a thread; the thread ends at
    end of file, once the child has exited and this context is left.
    """
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w", buffering=1)
    target = sink or sys.stderr

    def write(text: str) -> None:
        if text:
            with contextlib.suppress(Exception):
                target.write(text)
                target.flush()

    def scrubbed(text: str) -> str:
        try:
            return current().text(text)
        except Exception:
            return ""  # never write what could not be scrubbed

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held, partial = "", ""  # held: whole lines that may begin a secret; partial: a line not ended yet
        with os.fdopen(read_fd, "rb", buffering=0) as raw:
            while True:
                readable, _, _ = select.select([raw], [], [], IDLE_FLUSH_S if held else None)
                if not readable:  # quiet: nothing is coming to complete what is held
                    write(scrubbed(held))
                    held = ""
                    continue
                chunk = raw.read(CHUNK)
                if not chunk:
                    break
                text = partial + decoder.decode(chunk)
                end = text.rfind("\n") + 1
                complete, partial = text[:end], text[end:]
                if complete:
                    try:
                        ready, held = current().split(held + complete)
                    except Exception:
                        ready, held = "", ""
                    write(ready)
        write(scrubbed(held + partial + decoder.decode(b"", final=True)))

    thread = threading.Thread(target=pump, name="tool-stderr", daemon=True)
    thread.start()
    try:
        yield writer
    finally:
        writer.close()
        thread.join(timeout=2.0)


class ScrubbingFormatter(logging.Formatter):
    """Formats with the handler's own formatter, then scrubs the whole line (traceback included)."""

    def __init__(self, inner: logging.Formatter | None, scrub: Scrub) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(self._inner.format(record))


def scrub_logs(scrub: Scrub, logger: logging.Logger | None = None) -> None:
    """Wrap the formatter of every handler on ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, ScrubbingFormatter):
            handler.setFormatter(ScrubbingFormatter(handler.formatter, scrub))
