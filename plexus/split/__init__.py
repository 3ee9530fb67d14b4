"""Split learning (DynSplit, paper `004_…`): halves, wire codec and per-batch steps (the spec
section, `SplitSpec`, is in `plexus.spec`)."""

from plexus.spec import BITS, PathSpec, SplitSpec
from plexus.split.codec import BadSplitBatch, PathLayout, check_batch, dequantise, quantise

__all__ = ["BITS", "BadSplitBatch", "PathLayout", "PathSpec", "SplitSpec", "check_batch",
           "dequantise", "quantise"]
