"""``convergence-jax serve``'s OpenAPI schema against the app itself: schemathesis
generates requests (valid and invalid) for every route, in-process over ASGI, and
checks each answer: no 5xx, no status the schema does not declare, no body that
violates the declared model, the declared content type."""

from collections import defaultdict

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from convergence_jax.runtime import Runtime
from convergence_jax.runtime.serve import create_app

KEY = "rt-key-5d1c9a"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
ROUTES = {
    ("POST", "/select"),
    ("POST", "/update"),
    ("POST", "/expire"),
    ("GET", "/stats"),
    ("GET", "/healthz"),
}


def fuzz(tmp_path, api_key, headers, mode, realistic):
    """Run ``max_examples`` generated requests per route; the statuses seen."""
    runtime = Runtime(tmp_path / "rt.db", seed=0)
    runtime.configure("p", {"a": {"x": 1}, "b": {"x": 2}})
    runtime.configure("g", ["u", "v"], bandit="gaussian", reward_range=(-1.0, 1.0))
    decisions = [runtime.select("p").decision_id for _ in range(3)]
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(runtime, api_key)
    )
    seen, expected = defaultdict(set), set()
    for result in schema.get_all_operations():
        operation = result.ok()
        route = (operation.method.upper(), operation.path)
        inputs = ("path_parameters", "query", "headers", "cookies", "body")
        if mode == "negative" and not any(len(getattr(operation, k)) for k in inputs):
            continue  # /healthz takes nothing, so nothing can be invalid
        expected.add(route)
        # sometimes name the real bandit and decisions, to get past the 404s
        strategy = st.tuples(
            operation.as_strategy(generation_mode=mode),
            st.booleans() if realistic else st.just(False),
            st.sampled_from(decisions),
        )

        @given(strategy)
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,  # the same requests every run: a failure reproduces
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(drawn):
            case, real, decision = drawn
            if real and isinstance(case.body, dict):
                case.body = {**case.body, "bandit": "p"}
                if "decision_id" in case.body:
                    case.body["decision_id"] = decision
            if real and isinstance(case.query, dict) and "bandit" in case.query:
                case.query = {**case.query, "bandit": "p"}
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            seen[route].add(response.status_code)  # noqa: B023 (run now)

        run()
    assert set(seen) == expected  # every route was exercised
    assert expected == (
        ROUTES - {("GET", "/healthz")} if mode == "negative" else ROUTES
    )
    return seen


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_generated_requests_with_the_key(tmp_path, mode):
    seen = fuzz(tmp_path, KEY, {"X-API-Key": KEY}, mode, realistic=True)
    print(dict(seen))
    codes = set().union(*seen.values())
    assert 401 not in codes
    assert {200, 404, 422} <= codes if mode == "positive" else 422 in codes


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_generated_requests_without_the_key(tmp_path, mode):
    seen = fuzz(tmp_path, KEY, None, mode, realistic=True)
    print(dict(seen))
    for route in ("/select", "/update", "/expire"):
        # nothing done, nothing found without the key (FastAPI reads the body
        # first: an unreadable one is a 400 or 422)
        assert 401 in seen[("POST", route)] <= {400, 401, 422}
    if mode == "positive":
        assert seen[("GET", "/healthz")] == {200}


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_generated_requests_served_without_auth(tmp_path, mode):
    """``--insecure-no-auth``: no route declares (or answers) 401."""
    seen = fuzz(tmp_path, None, None, mode, realistic=True)
    print(dict(seen))
    assert 401 not in set().union(*seen.values())
