"""Deployment: install scripts, systemd units and the emulated testbed."""
