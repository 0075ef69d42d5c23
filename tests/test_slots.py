"""Connection slots and the token bucket, on real threads, with an injected clock and no timed sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from ecephys_dl.shared import Shared
from ecephys_dl.slots import ConnectionSlots, TokenBucket

pytestmark = pytest.mark.timeout(30)


def _until(condition: Callable[[], bool]) -> None:
    """Wait for another thread to reach a state (however long that takes: the test's timeout bounds it)."""
    while not condition():
        threading.Event().wait(0.001)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_no_more_connections_than_slots_and_a_freed_slot_goes_to_a_waiter() -> None:
    """At most ``count`` slots are out at once; a waiter gets the next slot released, in turn."""
    slots = ConnectionSlots(2, poll=10.0)  # a long poll: only a release (a notify) can wake the waiter
    never = threading.Event()
    assert slots.acquire(never) and slots.acquire(never)
    assert slots.free == 0
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(never)))
    waiter.start()
    _until(lambda: slots.waiting == 1)
    assert not got and slots.free == 0
    slots.release()
    waiter.join()
    assert got == [True] and slots.free == 0 and slots.waiting == 0
    slots.release()
    slots.release()
    assert slots.free == 2


def test_a_stopped_waiter_leaves_without_a_slot() -> None:
    """A waiter whose stop switch is set takes no slot: it is woken by ``wake`` and returns False."""
    slots = ConnectionSlots(1, poll=10.0)
    never, stop = threading.Event(), threading.Event()
    assert slots.acquire(never)
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(slots.acquire(stop)))
    waiter.start()
    _until(lambda: slots.waiting == 1)
    stop.set()
    slots.wake()
    waiter.join()
    assert answers == [False] and slots.free == 0
    assert not slots.acquire(stop)  # stopped before asking: no slot even when one is free
    slots.release()
    assert not slots.acquire(stop) and slots.free == 1


def test_a_cancel_wakes_a_run_waiting_for_a_slot() -> None:
    """Shared.cancel wakes every waiter for a connection slot at once."""
    with httpx.Client() as client:
        shared = Shared(client, max_connections=1)
        stop = threading.Event()
        assert shared.slots.acquire(stop)
        answers: list[bool] = []

        class Transfer:
            def abort(self) -> None:
                stop.set()

        transfer = Transfer()
        shared.register(transfer)
        waiter = threading.Thread(target=lambda: answers.append(shared.slots.acquire(stop)))
        waiter.start()
        _until(lambda: shared.slots.waiting == 1)
        shared.cancel()
        waiter.join()
        shared.unregister(transfer)
        assert shared.cancelled and answers == [False]


@pytest.mark.parametrize(
    ("rate", "steps", "waits"),
    [
        # (seconds passed, bytes read) -> seconds to wait; the burst is a tenth of a second's bytes
        (1000, [(0.0, 100)], [0.0]),  # the burst passes at once
        (1000, [(0.0, 100), (0.0, 100)], [0.0, 0.1]),  # past the burst: wait until it is paid for
        (1000, [(0.0, 600)], [0.5]),  # a read larger than the burst passes, and its reader pays
        (1000, [(0.0, 600), (0.0, 100)], [0.5, 0.1]),  # the debt was paid by waiting; the next pays its own
        (1000, [(0.0, 100), (10.0, 100)], [0.0, 0.0]),  # idle time refills the bucket, never past the burst
        (1000, [(10.0, 200)], [0.1]),  # ... so a long pause does not buy a larger burst
        (5, [(0.0, 1), (0.0, 1)], [0.0, 0.2]),  # a slow rate: a burst of at least one byte
    ],
)
def test_the_bucket_holds_the_rate(rate: int, steps: list[tuple[float, int]], waits: list[float]) -> None:
    """Over any stretch, bytes read never exceed rate * seconds + the burst: each read waits its share."""
    clock = Clock()
    bucket = TokenBucket(rate, clock)
    got = []
    for passed, nbytes in steps:
        clock.now += passed
        wait = bucket.reserve(nbytes)
        got.append(wait)
        clock.now += wait  # the reader waits as told
    assert got == pytest.approx(waits)


def test_the_bucket_is_shared_by_threads() -> None:
    """Threads reading at the same instant share one bucket: the waits add up to the bytes over the rate."""
    bucket = TokenBucket(1000, Clock())  # the clock stands still
    waits: list[float] = []
    lock = threading.Lock()

    def read() -> None:
        for _ in range(50):
            wait = bucket.reserve(10)
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 2000 bytes at once, 100 of them burst: the last reader waits for the other 1900 at 1000 bytes/s.
    assert max(waits) == pytest.approx(1.9)
    assert sum(1 for wait in waits if wait == 0) == 10
