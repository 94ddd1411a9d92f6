"""The side stage the recorder, the atom finder and the guard are built on (livedenoise._stage):
its queue's three policies when full, close's drain, timed work, per-item failures, and a thread
that dies. Real threads; every wait is bounded."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from livedenoise._stage import PipelineThread, SideStage

WAIT = 10.0  # seconds: a bound on every wait, never reached when things work


class Collect(SideStage[int]):
    """Keeps what it handles; waits for ``gate`` before each item; fails on negative items."""

    stage = "test"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.taken = threading.Event()  # set as an item is taken (before the gate)
        self.done: list[int] = []

    def _handle(self, item: int) -> None:
        self.taken.set()
        assert self.gate.wait(WAIT)
        if item < 0:
            self._failed("item %d failed", item)
            return
        if item == 99:
            raise RuntimeError("stage boom")
        self.done.append(item)


def wait_until(predicate, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_skip_leaves_out_the_oldest_waiting_items_and_close_drains_the_rest():
    stage = Collect(capacity=2, when_full="skip")
    stage.gate.clear()
    stage.start()
    stage._put(0)
    assert stage.taken.wait(WAIT)  # 0 is being handled: the queue is empty again
    for i in range(1, 6):
        assert stage._put(i)  # never refused, never blocks
    assert stage.waiting == 2 and stage.skipped == 3
    stage.gate.set()
    assert stage.close(WAIT)
    assert stage.done == [0, 4, 5] and stage.waiting == 0 and stage.failed == 0


def test_a_byte_limit_skips_too_and_an_item_larger_than_it_is_taken_alone():
    stage = Collect(capacity=10, capacity_bytes=100, when_full="skip")  # not started: the queue fills
    assert stage._put(1, 60) and stage._put(2, 30)
    assert stage._put(3, 30) and stage.skipped == 1  # 60 + 30 + 30 > 100: the oldest goes
    assert stage._put(4, 500) and stage.waiting == 1 and stage.skipped == 3  # alone
    assert stage._put(5, 1) and stage.skipped == 4


def test_drop_leaves_out_the_new_item():
    stage = Collect(capacity=2, when_full="drop")  # not started: the queue fills
    assert [stage._put(i) for i in range(5)] == [True, True, False, False, False]
    assert stage.skipped == 3
    stage.start()
    assert stage.close(WAIT) and stage.done == [0, 1]


def test_block_holds_the_producer_back_and_loses_nothing():
    stage = Collect(capacity=2, when_full="block")
    producer = threading.Thread(target=lambda: [stage._put(i) for i in range(6)], daemon=True)
    producer.start()
    producer.join(0.3)
    assert producer.is_alive() and stage.waiting == 2  # blocked: the thread has not started
    stage.start()
    producer.join(WAIT)
    assert not producer.is_alive()
    assert stage.close(WAIT) and stage.done == list(range(6)) and stage.skipped == 0


def test_a_stage_that_does_not_drain_leaves_the_waiting_items_out_on_close():
    class NoDrain(Collect):
        drain = False

    stage = NoDrain(capacity=8)
    stage.gate.clear()
    stage.start()
    stage._put(0)
    assert stage.taken.wait(WAIT)
    stage._put(1)
    stage._put(2)
    closing = threading.Thread(target=stage.close, args=(WAIT,), daemon=True)
    closing.start()
    time.sleep(0.05)
    stage.gate.set()
    closing.join(WAIT)
    assert not closing.is_alive() and not stage._thread.is_alive()
    assert stage.done == [0] and stage.skipped == 0  # left out, not skipped for want of room


def test_timed_work_wakes_the_thread_without_items():
    class Ticker(Collect):
        def __init__(self):
            super().__init__(capacity=4)
            self.ticks = 0
            self.due = 0.0

        def _wait_s(self) -> float:
            return self.due - time.monotonic()

        def _tick(self) -> None:
            if time.monotonic() >= self.due:
                self.ticks += 1
                self.due = time.monotonic() + 0.02

    stage = Ticker()
    stage.start()
    wait_until(lambda: stage.ticks >= 5)
    assert stage.close(WAIT) and stage.done == []


def test_an_idle_stage_sleeps():
    """Without items or timed work the thread waits on its condition: it does not poll."""

    class Counting(Collect):
        wake_ups = 0

        def _wait_s(self) -> None:
            self.wake_ups += 1
            return None

    stage = Counting(capacity=4)
    stage.start()
    time.sleep(0.3)
    assert stage.wake_ups == 1
    stage._put(1)
    assert stage.close(WAIT) and stage.done == [1] and not stage._thread.is_alive()


def test_per_item_failures_are_counted_logged_throttled_and_the_stage_goes_on(caplog):
    stage = Collect(capacity=64, logger=logging.getLogger("livedenoise.test"))
    with caplog.at_level(logging.WARNING, logger="livedenoise.test"):
        stage.start()
        for i in range(20):
            stage._put(-1 - i)
        stage._put(7)
        assert stage.close(WAIT)
    assert stage.failed == 20 and stage.done == [7]
    logged = [r for r in caplog.records if r.name == "livedenoise.test"]
    assert 5 <= len(logged) < 20 and logged[0].getMessage() == "item -1 failed"  # the first five, then throttled


def test_a_stage_that_dies_reports_through_the_failure_path_and_releases_the_producer():
    failures: list[PipelineThread] = []
    ended = threading.Event()

    def spawn(stage: str, target) -> PipelineThread:
        thread = PipelineThread(stage, target, lambda t: (failures.append(t), ended.set()))
        thread.start()
        return thread

    stage = Collect(capacity=2, when_full="block")
    stage.gate.clear()
    stage.start(spawn)
    stage._put(99)  # kills the thread once the gate opens
    assert stage.taken.wait(WAIT)
    stage._put(1)
    stage._put(2)
    producer = threading.Thread(target=stage._put, args=(3,), daemon=True)
    producer.start()
    producer.join(0.2)
    assert producer.is_alive()  # lossless: held back
    stage.gate.set()
    assert ended.wait(WAIT)
    producer.join(WAIT)
    assert not producer.is_alive()  # released for good
    (thread,) = failures
    assert thread.name == "ld-test" and isinstance(thread.error, RuntimeError) and str(thread.error) == "stage boom"
    assert not stage._put(4)
    assert stage.skipped == 4 and stage.done == []  # 1 and 2 were queued, 3 was waiting, 4 came after
    assert stage.close(WAIT)


def test_when_full_must_be_one_of_the_three():
    with pytest.raises(ValueError, match="when_full"):
        Collect(capacity=1, when_full="wait")
