"""stek._serial: changes asked for from inside a call wait until it ends."""

from __future__ import annotations

import threading

import pytest

from stek._serial import Serial


def test_a_change_from_inside_a_call_runs_after_it_in_order() -> None:
    serial, done = Serial(), []
    with serial.held():
        serial.run(lambda: done.append("add"))
        with serial.held():  # nested call: the outermost one runs the queue
            serial.run(lambda: done.append("remove"))
        assert done == []
        done.append("outer")
    assert done == ["outer", "add", "remove"]
    serial.run(lambda: done.append("now"))  # from outside: at once
    assert done[-1] == "now"


def test_queued_changes_run_even_when_the_call_raises() -> None:
    serial, done = Serial(), []
    with pytest.raises(ValueError), serial.held():
        serial.run(lambda: done.append("close"))
        raise ValueError("the call failed")
    assert done == ["close"]


def test_another_thread_waits_for_the_lock_and_runs_its_change_itself() -> None:
    serial, done = Serial(), []
    other = threading.Thread(target=lambda: serial.run(lambda: done.append(
        threading.current_thread().name)), name="other")
    with serial.held():
        other.start()
        other.join(0.2)
        assert other.is_alive() and done == []  # blocked on the lock, not queued
    other.join(5)
    assert done == ["other"]
