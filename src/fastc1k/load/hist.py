"""Latency histograms: the C loop's counts arrays as ``hdrh.HdrHistogram`` objects.

The C loop records microseconds into arrays laid out exactly as the hdrhistogram
package lays out HdrHistogram(1 us, 1 h, 3 significant digits), and ships the nonzero
(index, count) pairs. Loading them is one ``record_value`` per nonzero bucket, at the
bucket's lowest equivalent value, which lands in the same index.
"""
from __future__ import annotations

import math

from hdrh.histogram import HdrHistogram

# the layout is fixed in the C loop's index function; tests/test_load.py proves it equal
from ._client import HIST_DIGITS as DIGITS
from ._client import HIST_HIGHEST as HIGHEST_US
from ._client import HIST_LOWEST as LOWEST_US

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


COUNTS_LEN = new_histogram().counts_len


def add_sparse(h: HdrHistogram, pairs, max_us: int = 0) -> None:
    """Add (index, count) pairs from the C loop to h."""
    for idx, count in pairs:
        h.record_value(h.get_value_from_index(idx), count)
    if max_us > h.max_value:
        # exact maximum (the bucket value is its lowest equivalent)
        h.max_value = min(max_us, HIGHEST_US)


def merge_sparse(into: dict, pairs) -> None:
    for idx, count in pairs:
        into[idx] = into.get(idx, 0) + count


def from_sparse(pairs, max_us: int = 0) -> HdrHistogram:
    h = new_histogram()
    add_sparse(h, pairs, max_us)
    return h


_REF = new_histogram()      # for index <-> value conversions only


def stats(counts: dict, max_us: int = 0, pcts=PERCENTILES) -> dict:
    """Percentiles, mean and stdev of sparse {index: count}, with the package's semantics
    (a percentile is the highest value equivalent to its bucket; mean and stdev use each
    bucket's median equivalent value) but one pass over the nonzero buckets instead of
    the package's walk over all 23,552 of them."""
    out = {"count": 0, "mean": 0.0, "stdev": 0.0, "max": int(max_us), "p": {p: 0 for p in pcts}}
    items = sorted((i, c) for i, c in counts.items() if c)
    total = sum(c for _, c in items)
    if not total:
        return out
    out["count"] = total
    mids = [(_REF._hdr_median_equiv_value(_REF.get_value_from_index(i)), c) for i, c in items]
    mean = sum(v * c for v, c in mids) / total
    out["mean"] = mean
    out["stdev"] = math.sqrt(sum((v - mean) ** 2 * c for v, c in mids) / total)
    targets = sorted(pcts)
    run = 0
    k = 0
    for i, c in items:
        run += c
        while k < len(targets):
            p = targets[k]
            want = max(int(min(p, 100.0) * total / 100 + 0.5), 1)
            if run < want:
                break
            v = _REF.get_value_from_index(i)
            out["p"][p] = _REF.get_highest_equivalent_value(v) if p else _REF.get_lowest_equivalent_value(v)
            k += 1
    return out
