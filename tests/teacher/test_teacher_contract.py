"""What the teacher's OpenAPI schema promises, and what it answers, agree on the points
Schemathesis found apart (issue 16): the bearer scheme is documented; auth comes before the body
(401, not a 400 for malformed JSON); a 405 lists every method of the path in Allow; timestamps
carry their time zone; /metrics is text; every documented error is the one error body."""

from __future__ import annotations

from datetime import datetime

import pytest

JSON = {"Content-Type": "application/json"}


@pytest.fixture()
def teacher(make_teacher):
    return make_teacher(job_workers=0)


def test_the_bearer_scheme_and_every_error_are_documented(teacher):
    with teacher.client(None) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearer"]["description"]}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            open_route = path in ("/healthz", "/readyz", "/metrics")
            assert bool(operation.get("security")) is not open_route, (method, path)
            if not open_route:
                assert operation["security"] == [{"bearer": []}]
                assert {"401", "413", "429"} <= set(operation["responses"]), (method, path)
                if path.startswith("/admin/") or (path, method) == ("/v1/tasks", "post"):
                    assert "403" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_configured_limits_are_in_the_schema(teacher):
    """A request valid under the schema is never refused for a documented limit: the configured
    ones (this teacher's: 4 sync prompts, 200 job prompts, 500 characters, 64 tokens, 2 steps, 2
    chains) are stated as JSON Schema bounds, and no bound is left in pydantic's own words."""
    from schema_fuzz import non_standard_keywords

    with teacher.client(None) as client:
        schema = client.get("/openapi.json").json()
    assert non_standard_keywords(schema) == []
    models = schema["components"]["schemas"]
    for model, prompts in (("SampleRequest", 4), ("JobRequest", 200)):
        fields = models[model]["properties"]
        listed = fields["prompts"]["anyOf"][0]
        assert listed["maxItems"] == prompts and listed["items"]["maxLength"] == 500, (model, listed)
        assert fields["max_tokens"]["maximum"] == 64 and fields["chains"]["maximum"] == 2
        assert fields["steps"]["anyOf"][0]["maximum"] == 2 and fields["temperature"]["maximum"] == 2
    assert models["DistillationConfig"]["properties"]["max_steps"]["anyOf"][0]["maximum"] == teacher.settings.distill.max_steps


def test_metrics_are_documented_and_served_as_text(teacher):
    with teacher.client(None) as client:
        schema = client.get("/openapi.json").json()
        response = client.get("/metrics")
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/critique-revise", "/v1/tasks", "/admin/distillations", "/admin/pairs/1/exclusion"])
def test_an_anonymous_request_with_malformed_json_is_a_401(teacher, path):
    method = "PUT" if path.endswith("/exclusion") else "POST"
    with teacher.client(None) as anonymous, teacher.client() as client:
        response = anonymous.request(method, path, content=b"{not json", headers=JSON)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
        if path.startswith("/admin/") or path == "/v1/tasks":
            response = client.request(method, path, content=b"{not json", headers=JSON)
            assert response.status_code == 403, response.text  # a client key on an admin route: 403 before the body
            assert response.json()["error"]["type"] == "permission_error"
    with teacher.client(teacher.admin_token) as admin:
        response = admin.request(method, path, content=b"{not json", headers=JSON)
        assert response.status_code == 400, response.text  # with the token the body is read: malformed JSON
        assert set(response.json()) == {"error"} and response.json()["error"]["type"] == "invalid_request_error"


def test_a_405_lists_every_method_of_the_path(teacher):
    with teacher.client() as client:
        for path, methods in {"/v1/jobs": "GET, POST", "/v1/tasks": "GET, POST",
                              "/admin/pairs/1/exclusion": "DELETE, PUT", "/v1/jobs/x/cancel": "POST"}.items():
            response = client.request("PATCH", path)
            assert response.status_code == 405, (path, response.text)
            assert response.headers["allow"] == methods, path
            assert set(response.json()["error"]) == {"type", "message"}


def test_timestamps_carry_their_time_zone(teacher):
    with teacher.client() as client:
        response = client.post("/v1/jobs", json={"task": "sentiment", "prompts": ["Review a film."], "max_tokens": 4})
        assert response.status_code == 202, response.text
        job = client.get(f"/v1/jobs/{response.json()['id']}").json()
        listed = client.get("/v1/jobs").json()["data"][0]
    for view in (job, listed):
        created = datetime.fromisoformat(view["created_at"])
        assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0, view["created_at"]


def test_every_api_route_authenticates_before_the_body(teacher):
    from fastapi.routing import APIRoute

    from shared.web.routing import AuthFirstRoute

    routes = [route for route in teacher.app.routes if isinstance(route, APIRoute)]
    assert routes and all(isinstance(route, AuthFirstRoute) for route in routes), \
        [route.path for route in routes if not isinstance(route, AuthFirstRoute)]
