"""Lists of frame indices, one syntax everywhere: ``3``, ``1,3,5``, ``2-5``, ``0-2,9``, ``all``.

Ranges include both ends (``2-5`` is 2, 3, 4, 5), the way people count frames; the same
syntax serves ``train --val-timepoints``, ``preview --t/--z`` and every other option that
picks time points or slices, and :func:`format_ranges` writes it back.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from volseg.errors import InputError

_ITEM = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")


def parse_indices(spec, n: int, *, param: str, axis: str = "index") -> list[int]:
    """Indices in ``range(n)`` from a number, a sequence, or text in the one syntax.

    Parameters
    ----------
    spec : int, sequence of int, or str
        ``"all"``, or comma-separated numbers and inclusive ranges ``A-B``.
    n : int
        Length of the axis.
    param : str
        The parameter, for messages.
    axis : str
        What an index counts (``"time point"``), for messages.

    Returns
    -------
    list of int
        Unique, in the order given.

    Raises
    ------
    InputError
        Malformed text, an empty selection, or an index outside ``0..n-1``.
    """
    last = f"the last {axis} is {n - 1}" if n else f"there are no {axis}s"
    if isinstance(spec, (int, np.integer)):
        items = [int(spec)]
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(n))
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = _ITEM.fullmatch(part)
            if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
                raise InputError(f"cannot read {spec!r}; use numbers and inclusive ranges like "
                                 "'3', '1,3,5', '2-5' or 'all'", param=param)
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            items.extend(range(lo, hi + 1))
    else:
        items = [int(i) for i in spec]
    if not items:
        raise InputError(f"{spec!r} selects no {axis}", param=param)
    for i in items:
        if not 0 <= i < n:
            raise InputError(f"{axis} {i} is out of range ({last})", param=param)
    return list(dict.fromkeys(items))


def format_ranges(values) -> str:
    """``[14, 15, 16, 19]`` -> ``"14-16,19"`` (the syntax :func:`parse_indices` reads)."""
    out = []
    for _, run in itertools.groupby(enumerate(sorted(set(values))), key=lambda p: p[1] - p[0]):
        vals = [v for _, v in run]
        out.append(str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}")
    return ",".join(out)
