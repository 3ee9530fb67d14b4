"""Split learning (DynSplit, paper `004_…`): spec, halves, wire codec and per-batch steps."""

from plexus.split.codec import BadSplitBatch, PathLayout, check_batch, dequantise, quantise
from plexus.split.spec import BITS, PathSpec, SplitSpec

__all__ = ["BITS", "BadSplitBatch", "PathLayout", "PathSpec", "SplitSpec", "check_batch",
           "dequantise", "quantise"]
