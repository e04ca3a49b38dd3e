"""The plain-row parser: a compiled loop over the bytes of rows written the way every generator writes them.

A competition CSV is almost always `Id,Label,p0,...,p783` (or without Label) in plain decimal digits, one row
per `\\n` or `\\r\\n`. pyarrow's reader spends about 36 ns per cell on this shape (785 columns of 1-3 digit
cells; 3.35 s for 100,000 rows on one core of a 2-core Intel Xeon), which is as long as onnxruntime takes to
predict the images (`fashiondist infer` on 2 cores was 1.49x onnxruntime alone). This loop, compiled by
numba, reads the same rows in 0.51 s and writes the pixels straight into a row-major [N, 784] array.

It accepts only a subset of what pyarrow accepts, with the same values: Id and Label are 1-18 decimal digits
(no sign, space or quote), a pixel 1-3 digits with no leading zero and at most 255, the row's cells exactly
the header's count. A segment holding anything else (a space, a quote, a sign, a 19-digit Id, a lone `\\r`,
an empty line, a wrong cell count) returns None, and the caller parses that segment with pyarrow as before,
so every message and every accepted file is what it was. Without numba (an environment that cannot install
it) `plain_parser()` is None and pyarrow reads everything.

Loading the compiled code costs ~0.6 s of one core (numba's import, then its cache) and ~130 MB of memory
(numba and LLVM), as much time as pyarrow takes for ~18,000 rows, so the reader uses it only for a file of
WORTH_LOADING_BYTES or more, and then for every segment: a file read partly by pyarrow would hold both
readers' memory (100,000 rows: 449 MB peak against 371 MB).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from fashiondist.constants import NUM_PIXELS, PIXEL_MAX

# The shortest row: the Id's one digit, then 784 x (comma, one digit), then `\\n`; the Label adds 2.
_SHORTEST_ROW = 1 + 2 * NUM_PIXELS + 1
_MAX_KEY_DIGITS = 18  # 10**18 - 1 fits int64; a longer Id or Label goes to pyarrow, which range-checks it

# 48 MB is ~21,000 rows: pyarrow's ~0.8 s of one core for them outweighs the load's ~0.6 s.
WORTH_LOADING_BYTES = 48 << 20

Parser = Callable[[memoryview, bool], "tuple[np.ndarray, np.ndarray | None, np.ndarray] | None"]


@functools.cache
def plain_parser() -> Parser | None:
    """The compiled parser, or None when numba is not importable (pyarrow then reads every segment)."""
    try:
        import numba
    except ImportError:
        return None
    # cache=True: the machine code is kept beside this module (or in numba's user cache when that is read-only),
    # so only the first process ever compiles it (~1 s); later ones load it in ~0.4 s. Where neither place
    # can be written, numba refuses to cache, and every process compiles.
    try:
        kernel = numba.njit(cache=True, nogil=True, boundscheck=False)(_parse_rows)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        kernel = numba.njit(nogil=True, boundscheck=False)(_parse_rows)

    def parse(segment: memoryview, labelled: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
        """(ids int64 [N], labels int64 [N] or None, pixels uint8 [N, 784]) of whole rows, or None."""
        data = np.frombuffer(segment, dtype=np.uint8)
        capacity = len(data) // _SHORTEST_ROW + 1
        ids = np.empty(capacity, dtype=np.int64)
        labels = np.empty(capacity if labelled else 0, dtype=np.int64)
        pixels = np.empty((capacity, NUM_PIXELS), dtype=np.uint8)
        rows = kernel(data, labelled, ids, labels, pixels)  # the GIL is released meanwhile (nogil)
        if rows < 0:
            return None
        return ids[:rows], labels[:rows] if labelled else None, pixels[:rows]

    return parse


def _parse_rows(
    data, labelled, ids, labels, pixels
):  # pragma: no cover - runs compiled; tested through csvio
    """Fill ids/labels/pixels from `data` (uint8, whole rows); the row count, or -1 at the first irregularity.

    Written for numba: plain loops over bytes, no Python objects. 44 is `,`, 10 `\\n`, 13 `\\r`, 48-57 digits.
    """
    end = len(data)
    i = 0
    row = 0
    keys = 2 if labelled else 1
    while i < end:
        if row >= len(ids):
            return -1
        for key in range(keys):  # Id, then Label: 1-18 digits, then a comma
            value = 0
            digits = 0
            while i < end and 48 <= data[i] <= 57:
                value = value * 10 + (data[i] - 48)
                i += 1
                digits += 1
            if digits == 0 or digits > _MAX_KEY_DIGITS or i >= end or data[i] != 44:
                return -1
            i += 1
            if key == 0:
                ids[row] = value
            else:
                labels[row] = value
        for j in range(NUM_PIXELS):  # 1-3 digits, no leading zero, <= PIXEL_MAX; a comma, or the line end
            if i >= end or not 48 <= data[i] <= 57:
                return -1
            pixel = data[i] - 48
            i += 1
            if i < end and 48 <= data[i] <= 57:
                if pixel == 0:
                    return -1
                pixel = pixel * 10 + (data[i] - 48)
                i += 1
                if i < end and 48 <= data[i] <= 57:
                    pixel = pixel * 10 + (data[i] - 48)
                    i += 1
                    if pixel > PIXEL_MAX:
                        return -1
            pixels[row, j] = pixel
            if j < NUM_PIXELS - 1:
                if i >= end or data[i] != 44:
                    return -1
                i += 1
            elif i < end:  # the line end: `\n` or `\r\n` (the file's last row may have none)
                if data[i] == 13:
                    i += 1
                    if i >= end or data[i] != 10:
                        return -1  # a lone `\r` (old Mac line ends): pyarrow reads those
                elif data[i] != 10:
                    return -1
                i += 1
        row += 1
    return row
