"""Plexus RPC: decorator-based duplex RPC over HTTP (see rpc/errors.py for the error family)."""
