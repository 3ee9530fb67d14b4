"""Allocators: pure functions that decide how many shards each learner gets."""
