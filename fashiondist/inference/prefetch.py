"""Run an iterator one step ahead in a background thread: parse the next CSV chunk while onnxruntime predicts
the current one.

Both sides spend their time in native code that releases the GIL (the compiled plain-row parser or pyarrow's
CSV reader, onnxruntime's session), so on two cores a thread overlaps them: at 1M rows, reading and
validating was 30% of `infer` and ran strictly before each chunk's inference. The queue is bounded, so memory stays a few chunks whatever the file's size.

Items and errors come out in the source's order: an exception the source raises is re-raised by the
consumer when it reaches that position, after every item before it, exactly as iterating the source
in the consumer's own thread would.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()  # the source is exhausted
_POLL_SECONDS = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(source: Iterator[T], depth: int) -> Iterator[T]:
    """The items of `source`, produced by a daemon thread up to `depth` items ahead of the consumer.

    depth 0 iterates `source` in the caller's thread (no thread at all). Closing the returned generator
    early (an error downstream, Ctrl-C) stops the producer at its next item and closes `source`.
    """
    if depth < 1:
        yield from source
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    break
            else:
                put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there in order
            put(_Raised(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="fashiondist-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
