"""The executor's secret store on a real file system, and the scrubbed stderr pipe with a real child."""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from writ_executor.redaction import Redactor
from writ_executor.scrubbed_output import ScrubbingFormatter, scrubbed_pipe
from writ_executor.secret_store import SecretStore, SecretStoreError

pytestmark = pytest.mark.integration

VALUE = "canary-7c1e0b9f52d44a8e"
ENV_KEY = base64.b64encode(bytes(range(32))).decode()


def files_contain(directory: Path, needle: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("env_key", [None, ENV_KEY], ids=["generated-key", "env-key"])
def test_values_round_trip_encrypted_and_owner_only(tmp_path: Path, env_key: str | None) -> None:
    store = SecretStore(tmp_path / "secrets", env_key)
    assert store.values() == {}
    store.put("api-token", VALUE)
    store.put("other", "value-2")
    assert SecretStore(tmp_path / "secrets", env_key).values() == {"api-token": VALUE, "other": "value-2"}
    assert [e.name for e in store.entries()] == ["api-token", "other"]
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    for path in store.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (store.key_file.exists()) == (env_key is None)
    for needle in (VALUE.encode(), base64.b64encode(VALUE.encode()), VALUE.encode().hex().encode()):
        assert files_contain(tmp_path, needle) == []
    assert store.delete("api-token") is True
    assert store.delete("api-token") is False
    assert store.values() == {"other": "value-2"}


def test_a_replaced_value_is_read_again(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "s")
    store.put("a", "first-value")
    assert store.values()["a"] == "first-value"
    store.put("a", "second-value")
    assert store.values()["a"] == "second-value"


def test_the_wrong_or_a_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    SecretStore(tmp_path / "s", ENV_KEY).put("a", VALUE)
    other = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(SecretStoreError) as wrong:
        SecretStore(tmp_path / "s", other).values()
    assert wrong.value.code == "secrets_locked"
    with pytest.raises(SecretStoreError) as missing:
        SecretStore(tmp_path / "s").values()
    assert missing.value.code == "secrets_locked" and "WRIT_SECRETS_KEY" in missing.value.message
    with pytest.raises(SecretStoreError) as malformed:
        SecretStore(tmp_path / "t", "not-a-key").put("a", VALUE)
    assert malformed.value.code == "invalid_secrets_key"


def test_a_sealed_value_moved_to_another_name_is_refused(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "s")
    store.put("a", VALUE)
    store.put("b", "value-b")
    data = store.store_file.read_text().replace('"a"', '"tmp"').replace('"b"', '"a"').replace('"tmp"', '"b"')
    store.store_file.write_text(data)
    with pytest.raises(SecretStoreError) as swapped:
        store.values()
    assert swapped.value.code == "secrets_unreadable"


def test_a_child_writing_a_secret_to_stderr_is_scrubbed(tmp_path: Path) -> None:
    sink = io.StringIO()
    with scrubbed_pipe(lambda: Redactor({"x": VALUE}), sink) as errlog:
        subprocess.run(
            [sys.executable, "-c", f"import sys; print('config token={VALUE}', file=sys.stderr)"],
            stderr=errlog,
            check=True,
        )
    assert sink.getvalue() == "config token=[redacted:x]\n"


def test_a_secret_that_spans_stderr_lines_is_scrubbed_whole() -> None:
    """Lines too short to be redacted on their own ("ab") are caught as part of the whole value."""
    multi = f"{VALUE}\nab\ncd"
    parts = [f"key={VALUE}\n", "ab\n", "cd and after\n", "ab\n", "end\n"]
    script = (
        "import sys, time\n"
        "print('before', file=sys.stderr, flush=True)\n"
        f"for part in {parts!r}:\n"
        "    sys.stderr.write(part); sys.stderr.flush(); time.sleep(0.05)\n"
    )
    sink = io.StringIO()
    with scrubbed_pipe(lambda: Redactor({"x": multi}), sink) as errlog:
        subprocess.run([sys.executable, "-c", script], stderr=errlog, check=True)
    assert sink.getvalue() == "before\nkey=[redacted:x] and after\nab\nend\n"


def test_log_lines_and_tracebacks_are_scrubbed() -> None:
    formatter = ScrubbingFormatter(logging.Formatter("%(message)s"), lambda t: t.replace(VALUE, "[redacted:x]"))
    try:
        raise RuntimeError(f"failed with {VALUE}")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "token %s", (VALUE,), sys.exc_info())
    line = formatter.format(record)
    assert VALUE not in line and line.count("[redacted:x]") == 2


def test_lines_held_back_reach_the_sink_once_the_child_is_quiet() -> None:
    """A line that may begin a multi-line secret waits for the next; a quiet child's last line is still written."""
    multi = f"{VALUE}\nab"
    script = f"import sys, time\nprint({VALUE!r}, file=sys.stderr, flush=True)\ntime.sleep(3)\n"
    sink = io.StringIO()
    with scrubbed_pipe(lambda: Redactor({"x": multi}), sink) as errlog:
        child = subprocess.Popen([sys.executable, "-c", script], stderr=errlog)
        deadline = time.monotonic() + 2.5
        while not sink.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.getvalue() == "[redacted:x]\n"  # written while the child still runs, scrubbed line by line
        child.wait(timeout=10)
