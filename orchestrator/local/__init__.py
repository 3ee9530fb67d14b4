"""A local fleet on loopback: the orchestrator and agent processes of emulated speeds.

`fleet.LocalFleet` starts real `plexus` processes (used by `plexus demo`, the end-to-end tests
and the benchmarks); `emulation.DutyCycle` imposes a device speed on a process by SIGSTOP /
SIGCONT. Nothing of the running service imports this package.
"""
