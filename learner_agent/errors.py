"""Exceptions of the learner agent.

Hierarchy::

    AgentError
    ├── BadTask                the orchestrator sent a task spec or arguments the agent cannot use
    ├── Busy                   a training or benchmark call arrived while another one runs
    └── OrchestratorError      talking to the orchestrator's REST API failed
        ├── OrchestratorUnreachable   could not connect, or the connection dropped
        └── OrchestratorRefused       it answered with an error (bad join token, unknown shard…)

Procedures raise these; the RPC layer hands them to the caller as a `RemoteError` carrying the
type name, and the agent keeps serving.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the learner agent raises."""


class BadTask(AgentError, ValueError):
    """The task spec or call arguments are invalid for this agent; fix the spec and resubmit."""


class Busy(AgentError):
    """The agent is already running a benchmark or a training call."""


class OrchestratorError(AgentError):
    """A REST call to the orchestrator failed."""


class OrchestratorUnreachable(OrchestratorError):
    """The orchestrator could not be reached; the agent retries with back-off."""


class OrchestratorRefused(OrchestratorError):
    """The orchestrator answered with an HTTP error; `status` and `code` say which."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
