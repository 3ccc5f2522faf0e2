"""The student's OpenAPI schema and its answers agree (issue 16): the bearer scheme is documented,
invalid requests are the documented 400 (never FastAPI's 422), auth comes before the body (401,
not a 400 for malformed JSON), a 405 lists the path's methods, /metrics is text."""

from __future__ import annotations

import httpx

JSON = {"Content-Type": "application/json"}


def test_the_schema_documents_bearer_auth_and_400_not_422(registry_server):
    url, _app = registry_server
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": []}]
    assert "400" in chat["responses"] and "422" not in chat["responses"]
    assert chat["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_configured_limits_are_in_the_schema(registry_server):
    """max_tokens, max_completion_tokens and n carry this service's limits (64 and 4 here) as JSON
    Schema bounds; no bound is left in pydantic's own words."""
    from schema_fuzz import non_standard_keywords

    url, _app = registry_server
    schema = httpx.get(f"{url}/openapi.json").json()
    assert non_standard_keywords(schema) == []
    fields = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert fields["max_tokens"]["anyOf"][0]["maximum"] == 64 and fields["max_completion_tokens"]["anyOf"][0]["maximum"] == 64
    assert fields["n"]["maximum"] == 4 and fields["temperature"]["anyOf"][0]["maximum"] == 2


def test_an_anonymous_request_with_malformed_json_is_a_401(registry_server, keys):
    url, _app = registry_server
    response = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers=JSON)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    response = httpx.post(f"{url}/admin/reload", content=b"{}", headers=JSON | {"Authorization": f"Bearer {keys['client']}"})
    assert response.status_code == 403
    response = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers=JSON | {"Authorization": f"Bearer {keys['client']}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_405_lists_the_paths_methods(registry_server, keys):
    url, _app = registry_server
    response = httpx.get(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {keys['client']}"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert set(response.json()["error"]) == {"type", "message", "param", "code"}


def test_every_api_route_authenticates_before_the_body(registry_server):
    from fastapi.routing import APIRoute

    from shared.web.routing import OpenAIRoute

    _url, app = registry_server
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    assert routes and all(isinstance(route, OpenAIRoute) for route in routes), \
        [route.path for route in routes if not isinstance(route, OpenAIRoute)]
