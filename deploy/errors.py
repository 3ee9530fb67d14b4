"""Exceptions of the deployment tooling and the emulated testbed (`deploy`).

Hierarchy::

    DeployError
    ├── AgentConfigError  an installed agent's config or join-token file is missing, malformed
    │                     or readable by other users
    └── TestbedError
        ├── FleetError        a fleet file is malformed or asks for something impossible
        ├── PrivilegeError    the testbed needs root (namespaces, tc, cgroups) and lacks it
        ├── HostError         this host lacks a tool or kernel feature (ip, tc, cgroup controller)
        ├── CommandError      an `ip` / `tc` command failed; carries the command and its stderr
        └── StateError        the state file and the running testbed disagree (already up, not
                              up, unknown learner)

Callers catch the family they care about; every message says what was wrong and what to do.
"""

from __future__ import annotations


class DeployError(Exception):
    """Root of every error raised by `deploy`."""


class AgentConfigError(DeployError, ValueError):
    """An installed agent's config or join-token file is missing, malformed or too readable."""


class TestbedError(DeployError):
    """Root of every error raised by `deploy.testbed`."""

    # pytest would try to collect a class whose name starts with "Test".
    __test__ = False


class FleetError(TestbedError, ValueError):
    """A fleet description has unknown keys, unknown profiles or impossible values."""


class PrivilegeError(TestbedError, PermissionError):
    """The testbed needs root to create namespaces, qdiscs and cgroups."""


class HostError(TestbedError):
    """A tool or kernel feature the testbed needs is missing on this host."""


class CommandError(TestbedError):
    """A system command (`ip`, `tc`) exited with an error."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        said = stderr.strip() or "(no output)"
        super().__init__(f"`{' '.join(argv)}` failed with exit status {returncode}: {said}")


class StateError(TestbedError):
    """The testbed is not in the state an operation needs (already up, not up, unknown name)."""
