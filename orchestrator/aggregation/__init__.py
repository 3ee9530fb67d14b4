"""Aggregators: pure cores that combine learner updates into the global model."""
