"""The read-ahead thread between Parquet decoding and COPY: order, errors, early stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pipeline.load.batches import prefetch


def test_items_arrive_in_order() -> None:
    assert list(prefetch(iter(range(100)), depth=2)) == list(range(100))


def test_a_producer_error_is_raised_in_the_consumer_after_the_good_items() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad part")

    got: list[int] = []
    with pytest.raises(ValueError, match="bad part"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1_000_000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    stream.close()  # joins the worker
    assert len(produced) < 10
    assert not any(t.name == "load-prefetch" for t in threading.enumerate())
