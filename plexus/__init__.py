"""Plexus shared domain: task specs, model zoo, datasets and shards, cost model, tensor codecs."""

__version__ = "0.1.0"
