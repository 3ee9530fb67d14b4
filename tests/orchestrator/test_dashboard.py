"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a live
orchestrator with two agents (orchestrator/local/fleet.py).

Sign-in refuses a wrong token and changes nothing, the right one gives an HttpOnly,
SameSite=Strict cookie; the task page's accuracy curve gains points as rounds finish without a
reload; a MED job's page shows its metrics and plan; the fleet page shows an agent go offline
once it is killed; no page raises a script error. Screenshots go to the test's tmp dir.
Without chromium or playwright the test skips (fails when CI is "true").
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.local.fleet import LocalFleet

# Extended tier (CI runs it; ~40 s with its fleet): `make test` stays under 5 minutes.
pytestmark = [pytest.mark.slow, pytest.mark.extended]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ROUNDS = 3


def _need(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the dashboard test)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _need(f"no {CHROMIUM}: apt-get install chromium to run the dashboard test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def fleet(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("dash")) / "data",
                   speeds={"alpha": 1.0, "beta": 1.0})
    try:
        f.start()
        yield f
    finally:
        f.stop()


def spec() -> dict[str, Any]:
    return {"name": "dashboard-dab", "model": "twonn", "dataset": {"name": "digits"},
            "partition": {"shard_size": 100}, "training": {"lr": 0.1, "iterations": 2},
            "sync": {"allocator": "dab", "deadline_s": 2.0, "grace_s": 2.0,
                     "rounds": ROUNDS, "benchmark_shards": 2}}


def job_task(name: str) -> dict[str, Any]:
    return {"name": name, "model": "twonn", "dataset": {"name": "digits"},
            "partition": {"shard_size": 50}, "training": {"lr": 0.1, "iterations": 1},
            "sync": {"deadline_s": 2.0, "grace_s": 2.0, "rounds": 1, "benchmark_shards": 1,
                     "total_shards": 4}}


def get_json(url: str, cookie: str | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def sign_in(page: Any, ctx: Any, fleet: LocalFleet, shots: Path) -> None:
    """Nothing without a session; a wrong token is refused; the right one signs in."""
    base = fleet.url
    status, body = get_json(f"{base}/ui/api/fleet")
    assert (status, body["error"]) == (401, "no_session")
    page.goto(f"{base}/ui/fleet")
    assert page.url.startswith(f"{base}/ui/login")

    # A wrong token is refused and opens no session.
    page.fill("#token", "not-the-token")
    with page.expect_response(lambda r: r.url.endswith("/ui/login")) as res:
        page.click("#signin")
    assert res.value.status == 401
    assert page.get_attribute("#error", "data-error") == "wrong_token"
    assert ctx.cookies() == []
    page.screenshot(path=str(shots / "login-refused.png"))

    # The right one: back to the page asked for, with a strict HttpOnly cookie.
    page.fill("#token", fleet.admin_token)
    page.click("#signin")
    page.wait_for_url(f"{base}/ui/fleet")
    (cookie,) = ctx.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    page.wait_for_selector("tr[data-learner=alpha] .online-state:has-text('online')")
    page.wait_for_selector("tr[data-learner=beta] .online-state:has-text('online')")
    # Each learner's model factories (what its agent reports; none but the built-ins here
    # unless the test plugin of test_user_models is installed in this venv).
    assert page.locator("tr[data-learner=alpha] td.models").inner_text().strip()
    assert get_json(f"{base}/ui/api/fleet", f"{cookie['name']}={cookie['value']}")[0] == 200


def follow_a_task(page: Any, fleet: LocalFleet, shots: Path) -> int:
    """The task page follows the rounds live: the accuracy curve gains points, no reload."""
    with fleet.client() as client:
        task = client.submit(spec())
    page.goto(f"{fleet.url}/ui/tasks/{task['id']}")
    page.evaluate("window.notReloaded = true")
    seen = []
    for n in range(1, ROUNDS + 1):
        page.wait_for_function(
            f"+document.querySelector('#chart-accuracy').dataset.points >= {n}", timeout=60_000)
        seen.append(int(page.get_attribute("#chart-accuracy", "data-points") or 0))
    assert seen == sorted(seen) and seen[-1] == ROUNDS, seen
    page.wait_for_function("document.querySelector('#task-state').textContent === 'finished'")
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#rounds tbody tr").count() == ROUNDS
    assert page.locator("#chart-loss circle").count() == ROUNDS
    # Each learner's time per round is recorded and shown (DAB predicts none: no b_k, c_k).
    with fleet.client() as client:
        last = client.rounds(task["id"])[-1]
    assert last["times"] and all(t["actual_s"] > 0 and t["predicted_s"] is None
                                 for t in last["times"].values()), last["times"]
    cell = page.locator("#allocation tbody tr").first.locator("td").nth(1).inner_text()
    assert cell.count(" · ") == 2, cell  # shards · samples · seconds
    page.screenshot(path=str(shots / "task.png"), full_page=True)
    return int(task["id"])


def show_a_job(page: Any, fleet: LocalFleet, shots: Path) -> None:
    """A MED job's page: its tasks, the thesis 4.3 metrics and predicted vs actual per round."""
    with fleet.client() as client:
        job = client.submit_job({"name": "dashboard-job", "allocator": "med",
                                 "tasks": [job_task("j1"), job_task("j2")]})
    page.goto(f"{fleet.url}/ui/jobs/{job['id']}")
    page.wait_for_function("document.querySelector('#job-state').textContent === 'finished'",
                           timeout=60_000)
    assert page.locator("#job-rounds tbody tr").count() == 2  # one round of two tasks
    assert page.locator("#job-metrics tbody tr").count() == 3  # all tasks, j1, j2
    page.screenshot(path=str(shots / "job.png"), full_page=True)


def show_an_async_task(page: Any, fleet: LocalFleet, shots: Path) -> None:
    """An async task's page: staleness histogram, accepted vs refused, buffer fill."""
    with fleet.client() as client:
        task = client.submit({
            "name": "dashboard-async", "model": "twonn", "dataset": {"name": "digits"},
            "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": 450},
            "training": {"lr": 0.3, "batch_size": 16}, "mode": "async",
            "async": {"aggregator": "spin", "k": 2, "pi_s": 0.5, "pull_threshold": 80,
                      "epochs": 1, "arrival_rate": 40.0, "max_updates": 2}})
    page.goto(f"{fleet.url}/ui/tasks/{task['id']}")
    page.wait_for_function("document.querySelector('#task-state').textContent === 'finished'",
                           timeout=60_000)
    page.wait_for_function("+document.querySelector('#chart-staleness').dataset.bars >= 1")
    assert page.locator("#chart-updates rect").count() == 2
    assert page.get_attribute("#buffer-fill", "max") == "2"
    page.screenshot(path=str(shots / "async.png"), full_page=True)


def see_an_agent_go_offline(page: Any, fleet: LocalFleet, shots: Path) -> None:
    """The fleet page shows an agent go offline once it is killed."""
    page.goto(f"{fleet.url}/ui/fleet")
    page.wait_for_selector("tr[data-learner=beta] .online-state:has-text('online')")
    fleet.kill_agent("beta", signal.SIGKILL)
    page.wait_for_selector("tr[data-learner=beta] .online-state:has-text('offline')",
                           timeout=40_000)
    assert page.locator("tr[data-learner=alpha] .online-state").inner_text() == "online"
    page.screenshot(path=str(shots / "fleet.png"), full_page=True)


def test_dashboard_live(browser: Any, fleet: LocalFleet, tmp_path: Path) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []  # script errors on any page fail the test
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, ctx, fleet, tmp_path)
    task_id = follow_a_task(page, fleet, tmp_path)
    page.goto(f"{fleet.url}/ui")
    page.wait_for_selector(f"#tasks a[href='/ui/tasks/{task_id}']")
    show_a_job(page, fleet, tmp_path)
    show_an_async_task(page, fleet, tmp_path)
    see_an_agent_go_offline(page, fleet, tmp_path)  # last: it kills an agent
    assert errors == [], errors
    print(f"screenshots in {tmp_path}")
    ctx.close()
