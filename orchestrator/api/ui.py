"""The dashboard at /ui: server-rendered pages, live through JSON polled by a small script.

Nothing is shown without a session: `/ui/login` takes the admin token (compared as bytes in
constant time) and answers an HttpOnly, SameSite=Strict cookie naming a session held in memory
until it expires. Pages are Jinja2 templates under `templates/`; `static/dashboard.js` polls
`/ui/api/...` every 2 s and draws the tables and SVG charts (no CDN, no Node, no build step;
docs/dashboard.md). Data comes from the same Service and views as the REST API.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.api.deps import ServiceDep, same_secret
from orchestrator.api.learners import learner_view
from orchestrator.api.tasks import round_view, task_view
from orchestrator.errors import NotFound, Unauthorized
from orchestrator.service import Service

HERE = Path(__file__).parent
COOKIE = "plexus_session"
SESSION_S = 12 * 3600.0
MAX_LOGIN_BODY = 4096
BENCHMARK_TASKS = 20  # the fleet page reads SB's b_k, c_k from this many most recent tasks
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

router = APIRouter(prefix="/ui", include_in_schema=False)


@dataclass
class Sessions:
    """Dashboard sessions in memory: id → expiry (seconds since the epoch)."""

    ttl_s: float = SESSION_S
    expiry: dict[str, float] = field(default_factory=dict)

    def open(self, now: float) -> str:
        self.expiry = {k: t for k, t in self.expiry.items() if t > now}
        sid = secrets.token_urlsafe(32)
        self.expiry[sid] = now + self.ttl_s
        return sid

    def valid(self, sid: str | None, now: float) -> bool:
        return sid is not None and self.expiry.get(sid, 0.0) > now

    def close(self, sid: str | None) -> None:
        self.expiry.pop(sid or "", None)


def _sessions(request: Request) -> Sessions:
    state = request.app.state
    if not hasattr(state, "ui_sessions"):
        state.ui_sessions = Sessions()
    sessions: Sessions = state.ui_sessions
    return sessions


def _signed_in(request: Request) -> bool:
    return _sessions(request).valid(request.cookies.get(COOKIE), time.time())


@functools.cache
def _templates() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def _page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _templates().get_template(name).render(**values)
    return HTMLResponse(html, status_code=status,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303)


def _need_session(request: Request) -> None:
    """For the JSON endpoints: a 401 in the error tree's shape without a session."""
    if not _signed_in(request):
        raise Unauthorized("sign in to the dashboard at /ui/login first", code="no_session")


def _safe_next(target: str | None) -> str:
    # Only our own pages: never an absolute URL or a scheme-relative one.
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return "/ui"


# -- sign in / out ----------------------------------------------------------------------------

@router.get("/login")
def login_form(request: Request) -> Response:
    """The sign-in form."""
    return _page("login.html", error=None, next=_safe_next(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request, service: ServiceDep) -> Response:
    """Exchange the admin token for a session cookie."""
    body = (await request.body())[:MAX_LOGIN_BODY].decode("utf-8", "replace")
    form = parse_qs(body)
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    if not token or not same_secret(token, service.admin_token):
        return _page("login.html", status=401, next=target,
                     error="That is not the admin token (see <data dir>/admin_token).")
    sid = _sessions(request).open(time.time())
    out = RedirectResponse(target, status_code=303)
    out.set_cookie(COOKIE, sid, max_age=int(SESSION_S), httponly=True, samesite="strict",
                   secure=request.url.scheme == "https", path="/ui")
    return out


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the session."""
    _sessions(request).close(request.cookies.get(COOKIE))
    out = RedirectResponse("/ui/login", status_code=303)
    out.delete_cookie(COOKIE, path="/ui")
    return out


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The dashboard's script and style sheet (nothing else is served from disk)."""
    if name not in STATIC:
        raise NotFound(f"no dashboard asset {name!r}", code="asset_not_found")
    return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                    headers={"Cache-Control": "no-cache"})


# -- pages (the shell; dashboard.js fills it) ------------------------------------------------

@router.get("")
@router.get("/")
def overview(request: Request, service: ServiceDep) -> Response:
    """Tasks and jobs."""
    if not _signed_in(request):
        return _to_login(request)
    return _page("overview.html", page="overview", item=0, data=tasks_data(service))


@router.get("/fleet")
def fleet(request: Request, service: ServiceDep) -> Response:
    """Every learner."""
    if not _signed_in(request):
        return _to_login(request)
    return _page("fleet.html", page="fleet", item=0, data=fleet_data(service))


@router.get("/tasks/{task_id}")
def task_page(task_id: int, request: Request, service: ServiceDep) -> Response:
    """One task: status, rounds against the deadline, curves, allocation."""
    if not _signed_in(request):
        return _to_login(request)
    return _page("task.html", page="task", item=task_id, data=task_data(service, task_id))


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request, service: ServiceDep) -> Response:
    """One job: its tasks, thesis 4.3 metrics and the plan."""
    if not _signed_in(request):
        return _to_login(request)
    return _page("job.html", page="job", item=job_id, data=job_data(service, job_id))


# -- JSON the script polls ----------------------------------------------------------------------

@router.get("/api/fleet")
def api_fleet(request: Request, service: ServiceDep) -> dict[str, Any]:
    _need_session(request)
    return fleet_data(service)


@router.get("/api/tasks")
def api_tasks(request: Request, service: ServiceDep) -> dict[str, Any]:
    _need_session(request)
    return tasks_data(service)


@router.get("/api/tasks/{task_id}")
def api_task(task_id: int, request: Request, service: ServiceDep) -> dict[str, Any]:
    _need_session(request)
    return task_data(service, task_id)


@router.get("/api/jobs/{job_id}")
def api_job(job_id: int, request: Request, service: ServiceDep) -> dict[str, Any]:
    _need_session(request)
    return job_data(service, job_id)


# -- what the pages show ------------------------------------------------------------------------

def _names(service: Service) -> dict[str, str]:
    return {str(lr.id): lr.name for lr in service.store.learners()}


def _benchmarks(service: Service) -> dict[str, list[dict[str, Any]]]:
    """Per learner: SB's b_k and c_k as the last round of each recent task recorded them."""
    found: dict[str, list[dict[str, Any]]] = {}
    for t in service.store.tasks()[-BENCHMARK_TASKS:]:
        rounds = service.store.rounds(t.id)
        for k, entry in ((rounds[-1].times or {}) if rounds else {}).items():
            if entry.get("b_k") is not None:
                found.setdefault(k, []).append({"task": t.id, "round": rounds[-1].index,
                                                "b_k": entry["b_k"], "c_k": entry["c_k"]})
    return found


def fleet_data(service: Service) -> dict[str, Any]:
    """Learners with their state, facts, the running task they last worked on and SB's
    b_k, c_k history (from the round records of recent tasks)."""
    now = time.time()
    current: dict[str, dict[str, Any]] = {}
    for t in service.store.tasks(("running",)):
        rounds = service.store.rounds(t.id)
        if rounds:
            for k, n in rounds[-1].allocation.items():
                if n > 0:
                    current[k] = {"id": t.id, "name": t.name}
    bench = _benchmarks(service)
    learners = []
    for lr in service.store.learners():
        view = learner_view(lr, now, service.settings.alive_after_s)
        view["current_task"] = current.get(str(lr.id))
        view["benchmarks"] = bench.get(str(lr.id), [])
        learners.append(view)
    return {"now": now, "alive_after_s": service.settings.alive_after_s, "learners": learners}


def _brief(t: Any) -> dict[str, Any]:
    view = task_view(t)
    view.pop("spec", None)
    return view


def tasks_data(service: Service) -> dict[str, Any]:
    """Every task and job, newest first."""
    jobs = [{"id": j.id, "name": j.name, "state": j.state, "reason": j.reason,
             "allocator": j.options.get("allocator"), "task_ids": j.task_ids,
             "rounds_done": j.rounds_done} for j in service.store.jobs()]
    tasks = [_brief(t) for t in service.store.tasks()]
    return {"now": time.time(), "tasks": tasks[::-1], "jobs": jobs[::-1]}


def task_data(service: Service, task_id: int) -> dict[str, Any]:
    """A task, its rounds, the learners' names and, for a running async task, its counters."""
    task = task_view(service.store.task(task_id))
    spec = task["spec"] or {}
    runner = service.asynchronous.runners.get(task_id)
    return {"now": time.time(), "task": task,
            "deadline_s": (spec.get("sync") or {}).get("deadline_s"),
            "grace_s": (spec.get("sync") or {}).get("grace_s"),
            "rounds": [round_view(r) for r in service.store.rounds(task_id)],
            "names": _names(service),
            "async": runner.status() if runner is not None else None,
            "waiting": _waiting(service) if task["state"] in ("pending", "running") else "",
            "async_view": async_view(service, task_id, spec, runner) if task["mode"] == "async"
            else None}


def _waiting(service: Service) -> str:
    """What an active task waits for when no learner is alive (as `plexus task watch` says)."""
    if service.gateway.alive():
        return ""
    enrolled = len(service.store.learners())
    return ("waiting for learners: 0 enrolled" if not enrolled
            else f"waiting for learners: {enrolled} enrolled, none alive")


def async_view(service: Service, task_id: int, spec: dict[str, Any], runner: Any
               ) -> dict[str, Any]:
    """An async task's staleness histogram (from its aggregation events, so it outlives the
    run), buffer fill against K, and accepted vs refused updates."""
    from orchestrator.store import read_events

    histogram: dict[int, int] = {}
    after = 0
    while True:
        page = read_events(service.store, task_id, after, 1000)
        for e in page:
            if e.kind == "aggregated":
                for s in (e.data or {}).get("staleness", []):
                    histogram[int(s)] = histogram.get(int(s), 0) + 1
        if len(page) < 1000:
            break
        after = page[-1].id
    status = runner.status() if runner is not None else None
    refused = service.store.refusals(task_id)
    aggregated = sum(sum(r.allocation.values()) for r in service.store.rounds(task_id))
    return {"staleness": [[k, histogram[k]] for k in sorted(histogram)],
            "buffer": {"queued": status["queued"] if status else None,
                       "k": (spec.get("async") or {}).get("k")},
            "accepted": status["accepted"] if status else aggregated,
            "refused": sum(refused.values()),
            "refused_by_reason": refused}


def job_data(service: Service, job_id: int) -> dict[str, Any]:
    """A job as the REST API shows it, with the learners' names."""
    from orchestrator.runs.jobs import job_view

    job = service.store.job(job_id)
    view = job_view(job, service.store.job_rounds(job_id),
                    [service.store.task(t) for t in job.task_ids])
    return {"now": time.time(), "job": view, "names": _names(service)}
