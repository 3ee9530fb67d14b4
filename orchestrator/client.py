"""A small blocking client of the orchestrator's REST API (used by the CLI, demo and tests)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import httpx


class APIError(Exception):
    """The orchestrator answered an error: `status`, `code` and `detail` from its JSON body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class Client:
    """Talks to one orchestrator with the admin token; every call raises APIError on a 4xx/5xx."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 60.0,
                 verify: bool | ssl.SSLContext = True) -> None:
        """`verify` checks an https orchestrator's certificate (an SSLContext holding a
        private CA, or False for none)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                  verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise APIError(0, "unreachable", f"cannot reach the orchestrator at {self.url}: "
                           f"{exc}; is `plexus orchestrator serve` running?") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                raise APIError(r.status_code, str(body.get("error")), str(body.get("detail")))
            except ValueError:
                raise APIError(r.status_code, "http_error", r.text[:200]) from None
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.content

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")  # type: ignore[no-any-return]

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/tasks", json=spec)  # type: ignore[no-any-return]

    def tasks(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/tasks")["tasks"]  # type: ignore[no-any-return]

    def task(self, task_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/tasks/{task_id}")  # type: ignore[no-any-return]

    def cancel(self, task_id: int) -> dict[str, Any]:
        return self._call("POST", f"/v1/tasks/{task_id}/cancel")  # type: ignore[no-any-return]

    def rounds(self, task_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/tasks/{task_id}/rounds")["rounds"]  # type: ignore[no-any-return]

    def events(self, task_id: int, after: int = 0) -> dict[str, Any]:
        """A task's events with an id above `after`: `{"events": [...], "next": cursor}`."""
        return self._call("GET", f"/v1/tasks/{task_id}/events",  # type: ignore[no-any-return]
                          params={"after": after})

    def model(self, task_id: int, version: int | None = None) -> bytes:
        """Model version `version` of a task as safetensors bytes (the current one: None)."""
        params = {} if version is None else {"version": version}
        return self._call("GET", f"/v1/tasks/{task_id}/model",  # type: ignore[no-any-return]
                          params=params)

    def learners(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/learners")["learners"]  # type: ignore[no-any-return]

    def remove_learner(self, learner_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/learners/{learner_id}")  # type: ignore[no-any-return]

    def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs: several sync task specs under one allocator (docs/orchestrator.md)."""
        return self._call("POST", "/v1/jobs", json=job)  # type: ignore[no-any-return]

    def job(self, job_id: int) -> dict[str, Any]:
        """A job with its per-task per-round records and thesis 4.3 metrics."""
        return self._call("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def jobs(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/jobs")["jobs"]  # type: ignore[no-any-return]

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def wait_learners(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """Poll until at least `count` learners are alive, up to `timeout_s` seconds."""
        end = time.monotonic() + timeout_s
        while True:
            alive = [lr for lr in self.learners() if lr["alive"]]
            if len(alive) >= count:
                return alive
            if time.monotonic() > end:
                raise TimeoutError(f"only {len(alive)} of {count} learners enrolled after "
                                   f"{timeout_s:.0f} s")
            time.sleep(0.2)


def read_token(data_dir: str | Path, name: str = "admin_token") -> str | None:
    """The token an orchestrator kept in its data directory, if that directory is local."""
    path = Path(data_dir) / name
    return path.read_text().strip() if path.exists() else None
