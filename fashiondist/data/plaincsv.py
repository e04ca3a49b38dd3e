"""The plain-row parser: a compiled loop over the bytes of rows written the way every generator writes them.

A competition CSV is almost always `Id,Label,p0,...,p783` (or without Label) in plain decimal digits, one row
per `\\n` or `\\r\\n`. pyarrow's reader spends about 36 ns per cell on this shape (785 columns of 1-3 digit
cells; 3.35 s for 100,000 rows on one core of a 2-core Intel Xeon), which is as long as onnxruntime takes to
predict the images (`fashiondist infer` on 2 cores was 1.49x onnxruntime alone). A loop in C
(`_plainrows.c`, built when the package is installed) reads the same rows in ~0.3 s and writes the pixels
straight into a row-major [N, 784] array.

It accepts only a subset of what pyarrow accepts, with the same values: Id and Label are 1-18 decimal digits
(no sign, space or quote), a pixel 1-3 digits with no leading zero and at most 255, the row's cells exactly
the header's count. A segment holding anything else (a space, a quote, a sign, a 19-digit Id, a lone `\\r`,
an empty line, a wrong cell count) returns None, and the caller parses that segment with pyarrow as before,
so every message and every accepted file is what it was. Where the extension was not built (an install
without a C compiler) `plain_parser()` is None and pyarrow reads everything.

The same loop compiled by numba cost ~0.5 s of a core and ~130 MB before the first row (numba's import, then
its target's first use), so it paid only from ~21,000 rows on; the extension imports in ~1 ms and reads every
file, whatever its size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from fashiondist.constants import NUM_PIXELS

# The shortest row: the Id's one digit, then 784 x (comma, one digit), then `\\n`; the Label adds 2.
_SHORTEST_ROW = 1 + 2 * NUM_PIXELS + 1

Parser = Callable[[memoryview, bool], "tuple[np.ndarray, np.ndarray | None, np.ndarray] | None"]


@functools.cache
def plain_parser() -> Parser | None:
    """The compiled parser, or None when the extension is not built (pyarrow then reads every segment)."""
    try:
        from fashiondist.data import _plainrows
    except ImportError:
        return None
    return functools.partial(_parse_with, _plainrows.parse_rows)


def _parse_with(
    kernel: Callable[..., int], segment: memoryview, labelled: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
    """(ids int64 [N], labels int64 [N] or None, pixels uint8 [N, 784]) of whole rows, or None."""
    capacity = len(segment) // _SHORTEST_ROW + 1
    ids = np.empty(capacity, dtype=np.int64)
    labels = np.empty(capacity if labelled else 0, dtype=np.int64)
    pixels = np.empty((capacity, NUM_PIXELS), dtype=np.uint8)
    rows = kernel(segment, labelled, ids, labels, pixels)  # the GIL is released meanwhile
    if rows < 0:
        return None
    return ids[:rows], labels[:rows] if labelled else None, pixels[:rows]
