"""The agent's side of the orchestrator REST API (`docs/protocol.md`): enroll, heartbeat, fetch."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from learner_agent.errors import OrchestratorRefused, OrchestratorUnreachable


class OrchestratorClient:
    """Blocking client for the `/v1` calls an agent makes; thread-safe (one httpx.Client)."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 30.0, verify: bool | str | ssl.SSLContext = True
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token: str | None = None
        self.learner_id: int | None = None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, verify=verify)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(kwargs.pop("headers", None) or {})
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise OrchestratorUnreachable(
                f"cannot reach the orchestrator at {self.base_url} ({type(exc).__name__}: "
                f"{exc}); check the URL and that it is running"
            ) from None
        if response.status_code >= 400:
            code, detail = "http_error", response.text[:300]
            try:
                body = response.json()
                code, detail = str(body.get("error", code)), str(body.get("detail", detail))
            except ValueError:
                pass
            raise OrchestratorRefused(
                f"{method} {path} answered {response.status_code} {code}: {detail}",
                status=response.status_code,
                code=code,
            )
        return response

    def enroll(
        self,
        join_token: str,
        name: str,
        facts: dict[str, Any],
        endpoint: str | None,
        *,
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Enroll (or re-enroll) under `name`; stores the learner id and token it gets back.

        Re-enrolling an existing name needs `secret`, that learner's current token."""
        body: dict[str, Any] = {
            "join_token": join_token, "name": name, "facts": facts, "endpoint": endpoint
        }
        if secret:
            body["secret"] = secret
        answer: dict[str, Any] = self._request("POST", "/v1/learners/enroll", json=body).json()
        self.learner_id = int(answer["learner_id"])
        self.token = str(answer["token"])
        return answer

    def heartbeat(self, facts: dict[str, Any]) -> None:
        """Tell the orchestrator this learner is alive, with fresh device facts."""
        self._request("POST", f"/v1/learners/{self.learner_id}/heartbeat", json={"facts": facts})

    def shard(self, task_id: int, n: int) -> bytes:
        """Shard `n` of task `task_id` as safetensors bytes."""
        return self._request("GET", f"/v1/tasks/{task_id}/shards/{n}").content

    def model(self, task_id: int) -> bytes:
        """The task's current global parameters as safetensors bytes (metadata `version`)."""
        return self._request("GET", f"/v1/tasks/{task_id}/model").content

    def split_step(self, task_id: int, body: bytes, content_type: str) -> bytes:
        """One split-learning batch (an RPC-encoded body) → the server's encoded answer."""
        return self._request("POST", f"/v1/tasks/{task_id}/split/step", content=body,
                             headers={"Content-Type": content_type}).content
