"""Plexus orchestrator: REST service, store, allocators, aggregators and round drivers."""
