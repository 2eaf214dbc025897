"""The fault hook's arming file: it fires once per arming, in one process only, and never again."""

from __future__ import annotations

from pathlib import Path

import pytest

from writ_common import faults
from writ_common.metrics import read_port_file

pytestmark = pytest.mark.unit


def hits(trigger: faults.Trigger, appends: int) -> list[bool]:
    return [trigger.hit() for _ in range(appends)]


def test_an_unarmed_hook_never_fires(tmp_path: Path) -> None:
    assert hits(faults.Trigger(tmp_path / "registry.arm"), 10) == [False] * 10


def test_it_fires_on_the_nth_append_and_the_arming_is_consumed(tmp_path: Path) -> None:
    path = tmp_path / "registry.arm"
    arming = faults.arm(path, 3)
    assert not faults.has_fired(path, arming)
    assert hits(faults.Trigger(path), 3) == [False, False, True]
    assert not path.exists()
    assert faults.has_fired(path, arming)
    # The restarted process finds nothing armed: no crash loop.
    assert hits(faults.Trigger(path), 10) == [False] * 10


def test_of_two_processes_counting_the_same_arming_only_one_fires(tmp_path: Path) -> None:
    path = tmp_path / "executor.arm"
    faults.arm(path, 2)
    first, second = faults.Trigger(path), faults.Trigger(path)
    assert [first.hit(), second.hit()] == [False, False]
    assert first.hit() is True
    assert second.hit() is False
    assert hits(second, 5) == [False] * 5


def test_a_new_arming_starts_a_new_count_and_fires_again(tmp_path: Path) -> None:
    path = tmp_path / "policy.arm"
    trigger = faults.Trigger(path)
    faults.arm(path, 2)
    assert hits(trigger, 1) == [False]
    faults.arm(path, 2)  # re-armed before it fired: counts from this arming's first append
    assert hits(trigger, 2) == [False, True]
    again = faults.arm(path, 1)
    assert hits(trigger, 1) == [True]
    assert faults.has_fired(path, again)


def test_the_armed_block_disarms_even_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "ledger.arm"
    with pytest.raises(RuntimeError), faults.armed(path, 5):
        assert faults.read_arming(path) is not None
        raise RuntimeError("the test failed while armed")
    assert not path.exists() and not faults.fired_path(path).exists()
    assert hits(faults.Trigger(path), 10) == [False] * 10


def test_a_malformed_arming_is_no_arming(tmp_path: Path) -> None:
    path = tmp_path / "identity.arm"
    path.write_text("{not json")
    assert faults.read_arming(path) is None
    assert hits(faults.Trigger(path), 3) == [False] * 3
    with pytest.raises(ValueError, match="at least 1"):
        faults.arm(path, 0)


def test_a_port_file_is_read_back_or_is_none(tmp_path: Path) -> None:
    port_file = tmp_path / "registry.metrics-port"
    assert read_port_file(port_file) is None
    port_file.write_text("41234\n")
    assert read_port_file(port_file) == 41234
    port_file.write_text("0\n")
    assert read_port_file(port_file) is None
