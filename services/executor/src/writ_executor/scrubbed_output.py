"""The executor's own outputs that could carry a secret: a stdio tool server's stderr, and log lines.

A tool server started with a secret in its environment may print it (a debug dump of its
config, a traceback); its stderr would otherwise go straight into the executor's log. Both are
passed through the current redaction before they are written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

Scrub = Callable[[str], str]


@contextlib.contextmanager
def scrubbed_pipe(scrub: Scrub, sink: TextIO | None = None) -> Iterator[TextIO]:
    """A file to hand a child process as its stderr: each line is scrubbed, then written to ``sink``.

    The child needs a real descriptor, so this is an OS pipe read by a thread; the thread ends at
    end of file, once the child has exited and this context is left.
    """
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w", buffering=1)
    reader = os.fdopen(read_fd, "r", errors="replace")
    target = sink or sys.stderr

    def pump() -> None:
        with reader:
            for line in reader:
                with contextlib.suppress(Exception):
                    target.write(scrub(line))
                    target.flush()

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
