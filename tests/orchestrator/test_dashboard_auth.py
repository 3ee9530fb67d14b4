"""The dashboard's sign-in and session over plain HTTP against a real orchestrator process.

Runs without a browser (tests/orchestrator/test_dashboard.py drives chromium): nothing is shown
without a session, a wrong token opens none, the cookie's flags, the redirect stays on /ui,
signing out ends the session, and only the two assets are served from disk.
"""

from __future__ import annotations

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet

PAGES = ["/ui", "/ui/fleet", "/ui/tasks/1", "/ui/jobs/1"]
APIS = ["/ui/api/fleet", "/ui/api/tasks", "/ui/api/tasks/1", "/ui/api/jobs/1"]


def _sign_in(url: str, token: str, next_: str = "/ui/fleet") -> httpx.Response:
    return httpx.post(f"{url}/ui/login", data={"token": token, "next": next_})


def _session(orch: LocalFleet) -> dict[str, str]:
    r = _sign_in(orch.url, orch.admin_token)
    assert r.status_code == 303, r.text
    return {"plexus_session": r.cookies["plexus_session"]}


@pytest.mark.parametrize("path", PAGES)
def test_pages_without_a_session_go_to_the_form(shared_orchestrator: LocalFleet,
                                                path: str) -> None:
    r = httpx.get(shared_orchestrator.url + path)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/ui/login?next=")


@pytest.mark.parametrize("path", APIS)
@pytest.mark.parametrize("cookie", [None, "forged-session-id"])
def test_json_without_a_session_is_refused(shared_orchestrator: LocalFleet, path: str,
                                           cookie: str | None) -> None:
    cookies = {"plexus_session": cookie} if cookie else None
    r = httpx.get(shared_orchestrator.url + path, cookies=cookies)
    assert r.status_code == 401
    assert r.json()["error"] == "no_session"


@pytest.mark.parametrize("token", ["", "wrong", "x" * 5000])
def test_a_wrong_token_opens_no_session(shared_orchestrator: LocalFleet, token: str) -> None:
    r = _sign_in(shared_orchestrator.url, token)
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert 'data-error="wrong_token"' in r.text
    # Nothing changed: still no way in.
    assert httpx.get(shared_orchestrator.url + "/ui/fleet").status_code == 303


def test_the_admin_token_gives_a_strict_httponly_session(shared_orchestrator: LocalFleet
                                                         ) -> None:
    orch = shared_orchestrator
    r = _sign_in(orch.url, orch.admin_token)
    assert (r.status_code, r.headers["location"]) == (303, "/ui/fleet")
    flags = r.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/ui" in flags
    cookies = {"plexus_session": r.cookies["plexus_session"]}
    for path in ["/ui", "/ui/fleet"]:
        page = httpx.get(orch.url + path, cookies=cookies)
        assert page.status_code == 200 and "dashboard.js" in page.text
    body = httpx.get(orch.url + "/ui/api/fleet", cookies=cookies).json()
    assert body["learners"] == [] and body["alive_after_s"] > 0
    assert httpx.get(orch.url + "/ui/api/tasks", cookies=cookies).json()["tasks"] == []
    missing = httpx.get(orch.url + "/ui/api/tasks/999", cookies=cookies)
    assert (missing.status_code, missing.json()["error"]) == (404, "task_not_found")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/v1/tasks"])
def test_sign_in_only_redirects_to_the_dashboard(shared_orchestrator: LocalFleet,
                                                 target: str) -> None:
    r = _sign_in(shared_orchestrator.url, shared_orchestrator.admin_token, target)
    assert (r.status_code, r.headers["location"]) == (303, "/ui")


def test_signing_out_ends_the_session(shared_orchestrator: LocalFleet) -> None:
    orch = shared_orchestrator
    cookies = _session(orch)
    assert httpx.get(orch.url + "/ui/api/tasks", cookies=cookies).status_code == 200
    assert httpx.post(orch.url + "/ui/logout", cookies=cookies).status_code == 303
    assert httpx.get(orch.url + "/ui/api/tasks", cookies=cookies).status_code == 401


def test_only_the_two_assets_are_served(shared_orchestrator: LocalFleet) -> None:
    url = shared_orchestrator.url + "/ui/static/"
    js = httpx.get(url + "dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(url + "dashboard.css").status_code == 200
    for name in ["ui.py", "..%2Fui.py", "login.html"]:
        r = httpx.get(url + name)
        assert r.status_code == 404 and r.json()["error"] in ("asset_not_found", "not_found")


def test_a_task_page_says_it_waits_for_learners(shared_orchestrator: LocalFleet) -> None:
    orch = shared_orchestrator
    cookies = _session(orch)
    with orch.client() as client:
        task_id = client.submit({"name": "waits", "dataset": {"name": "synthetic",
                                 "samples": 400}, "partition": {"shard_size": 50}})["id"]
        body = httpx.get(f"{orch.url}/ui/api/tasks/{task_id}", cookies=cookies).json()
        assert body["waiting"] == "waiting for learners: 0 enrolled"
        client.cancel(task_id)
    body = httpx.get(f"{orch.url}/ui/api/tasks/{task_id}", cookies=cookies).json()
    assert body["waiting"] == ""  # an ended task waits for nothing
