"""The OpenAPI document of a real orchestrator tells the truth (issue 12, finding 10)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet


@pytest.fixture(scope="module")
def doc(shared_orchestrator: LocalFleet) -> dict[str, Any]:
    r = httpx.get(f"{shared_orchestrator.url}/openapi.json", timeout=30)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def _op(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = doc["paths"][path][method]
    return op


def _schema_of(doc: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ref = response["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def test_errors_are_declared_with_the_error_model(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["properties"] == {"error": {"type": "string", "title": "Error"},
                                   "detail": {"type": "string", "title": "Detail"}}
    expected = {
        ("get", "/v1/tasks/{task_id}"): {"401", "404", "422"},
        ("post", "/v1/tasks/{task_id}/cancel"): {"401", "404", "409", "422"},
        ("post", "/v1/tasks"): {"401", "413", "422"},
        ("get", "/v1/tasks/{task_id}/shards/{n}"): {"401", "403", "404", "422"},
        ("post", "/v1/learners/enroll"): {"401", "413", "422"},
        ("post", "/v1/tasks/{task_id}/updates"): {"401", "404", "409", "413", "422"},
        ("get", "/v1/jobs/{job_id}"): {"401", "404", "422"},
    }
    for (method, path), statuses in expected.items():
        responses = _op(doc, method, path)["responses"]
        assert statuses <= set(responses), (method, path, set(responses))
        for status in statuses:
            assert _schema_of(doc, responses[status]) == error, (method, path, status)
    # Every 4xx of every operation uses it.
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    assert _schema_of(doc, response) == error, (method, path, status)


def test_ids_are_declared_as_64_bit(doc: dict[str, Any]) -> None:
    for path in ("/v1/tasks/{task_id}", "/v1/jobs/{job_id}", "/v1/tasks/{task_id}/stop"):
        ops = doc["paths"][path]
        for op in ops.values():
            (param,) = [p for p in op["parameters"] if p["in"] == "path"]
            assert param["schema"]["minimum"] == 1
            assert param["schema"]["maximum"] == 2**63 - 1


def test_bearer_security_schemes(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["adminToken"] == {**schemes["adminToken"], "type": "http", "scheme": "bearer"}
    assert schemes["learnerToken"]["scheme"] == "bearer"
    assert _op(doc, "get", "/v1/tasks")["security"] == [{"adminToken": []}]
    # Model and shards: the admin or a learner taking part in the task (docs/security.md).
    for path in ("/v1/tasks/{task_id}/shards/{n}", "/v1/tasks/{task_id}/model"):
        security = _op(doc, "get", path)["security"]
        assert {"adminToken": []} in security and {"learnerToken": []} in security, path
    # No raw Authorization header parameter left over.
    for ops in doc["paths"].values():
        for op in ops.values():
            assert all(p["name"].lower() != "authorization" for p in op.get("parameters", []))


def test_task_body_is_the_typed_task_spec(doc: dict[str, Any]) -> None:
    body = _op(doc, "post", "/v1/tasks")["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskSpec"}
    spec = doc["components"]["schemas"]["TaskSpec"]
    assert {"name", "model", "dataset", "sync", "async", "mode"} <= set(spec["properties"])
    assert spec["additionalProperties"] is False
    assert "SyncSpec" in doc["components"]["schemas"]


def test_downloads_are_binary_and_metrics_text(doc: dict[str, Any]) -> None:
    for path in ("/v1/tasks/{task_id}/model", "/v1/tasks/{task_id}/shards/{n}",
                 "/v1/tasks/{task_id}/partitions/{client}"):
        ok = _op(doc, "get", path)["responses"]["200"]
        assert set(ok["content"]) == {"application/octet-stream"}, path
    assert set(_op(doc, "post", "/v1/tasks/{task_id}/pull")["responses"]["200"]["content"]) == {
        "application/octet-stream"}
    assert set(_op(doc, "get", "/metrics")["responses"]["200"]["content"]) == {"text/plain"}


def test_405_carries_allow_with_every_method_of_the_path(
        shared_orchestrator: LocalFleet) -> None:
    for method, path, allowed in (
        ("DELETE", "/v1/tasks", "GET, POST"),
        ("PUT", "/v1/tasks/1", "GET"),
        ("GET", "/v1/tasks/1/cancel", "POST"),
        ("DELETE", "/v1/jobs/1", "GET"),
        # A literal path wins over a template that also matches its text (make fuzz found
        # `Allow: DELETE, POST` here, from /v1/learners/{learner_id}).
        ("OPTIONS", "/v1/learners/enroll", "POST"),
        ("DELETE", "/v1/learners/enroll", "POST"),
    ):
        r = httpx.request(method, shared_orchestrator.url + path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.json()["error"] == "method_not_allowed"
        assert r.headers["allow"] == allowed, (method, path)


@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
    ("/redoc", ("redoc.standalone.js",)),
])
def test_docs_pages_load_their_assets_from_the_orchestrator(
        shared_orchestrator: LocalFleet, page: str, assets: tuple[str, ...]) -> None:
    html = httpx.get(shared_orchestrator.url + page).text
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in assets:
        src = f"/static-offline-docs/{asset}"
        assert src in html
        r = httpx.get(shared_orchestrator.url + src)
        assert r.status_code == 200 and len(r.content) > 100_000, asset
