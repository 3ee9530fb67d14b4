"""The HTTP edge of the orchestrator: the FastAPI app and one router module per resource.

- `app`: `create_app(settings)` builds the Service, the app, its lifespan and mounts;
- `deps`: the Service dependency and who is calling (`AdminDep`, `LearnerDep`);
- `errors`: the one place that maps the error tree to HTTP statuses;
- `health` (`/healthz`, `/metrics`), `learners`, `tasks`, `jobs`, `asynchronous` (pull /
  updates / stop / status of async tasks): the routes.
"""

from __future__ import annotations

from orchestrator.api.app import create_app

__all__ = ["create_app"]
