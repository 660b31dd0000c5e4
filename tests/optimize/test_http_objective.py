"""The HTTP objective against a real (fake) LLM API on 127.0.0.1."""

import json
import textwrap

import pytest

from convergence_jax.optimize import ConfigError, config_from_dict, run_optimization
from convergence_jax.optimize.http import (
    HttpCallError,
    get_path,
    http_objective,
    placeholders,
    render,
)
from tests.optimize.fake_llm import FakeLLM, probability

TOKEN = "sk-test-7f3a9c1e5b"
TIMEOUT = 0.6  # seconds per request: loose enough for a loaded CI machine
MODELS = ["good", "flaky", "broken", "garbage", "slow", "leaky"]


@pytest.fixture
def fake():
    server = FakeLLM(token=TOKEN, slow_s=2.5 * TIMEOUT)
    yield server
    server.close()


def write_cases(tmp_path, n=4):
    cases = [{"id": f"c{i}", "input": f"q{i}", "expected": f"a{i}"} for i in range(n)]
    (tmp_path / "cases.json").write_text(json.dumps(cases))


def http_config(tmp_path, base_url, **objective):
    write_cases(tmp_path)
    data = {
        "search_space": {
            "temperature": {"type": "float", "min": 0.0, "max": 2.0},
            "top_p": {"type": "float", "min": 0.5, "max": 1.0},
            "model": {"type": "categorical", "choices": MODELS},
        },
        "objective": {
            "type": "http",
            "timeout_s": 10.0,
            "max_workers": 4,
            "api": {
                "preset": "openai_chat",
                "base_url": base_url,
                "auth": {"type": "bearer", "token_env": "FAKE_LLM_TOKEN"},
                "request": {"max_tokens": 16},
                "request_timeout_s": TIMEOUT,
                "retries": 2,
                "backoff_s": 0.01,
                "backoff_max_s": 0.05,
                "pricing": {
                    "input_per_million": 1.0,
                    "output_per_million": 2.0,
                    "models": {"flaky": {"output_per_million": 4.0}},
                },
            },
            "test_cases": "cases.json",
            "judge": {"type": "exact"},
        }
        | objective,
        "metrics": {
            "quality": {"goal": "maximize", "weight": 0.9, "min": 0.0, "max": 1.0},
            "latency_ms": {"goal": "minimize", "weight": 0.1, "min": 0, "max": 1000},
        },
        "optimizer": {
            "generations": 4,
            "population_size": 10,
            "evaluations_per_generation": 25,
            "batch_size": 5,
            "seed": 0,
        },
        "output": {"dir": str(tmp_path / "out")},
    }
    return data


def test_render_and_paths():
    template = {
        "n": "{max_tokens}",
        "msg": [{"content": "Q: {input} at {temperature} {{literal}}"}],
        "fixed": 3,
    }
    values = {"max_tokens": 16, "input": "hi", "temperature": 0.5}
    assert render(template, values) == {
        "n": 16,
        "msg": [{"content": "Q: hi at 0.5 {literal}"}],
        "fixed": 3,
    }
    names = [n for n, _ in placeholders(template)]
    assert names == ["max_tokens", "input", "temperature"]
    body = {"choices": [{"message": {"content": "x"}}]}
    assert get_path(body, "choices.0.message.content") == "x"
    with pytest.raises(KeyError, match="no field 'mesage'"):
        get_path(body, "choices.0.mesage.content")
    with pytest.raises(KeyError, match="has 1 items, no index 3"):
        get_path(body, "choices.3")


def test_each_fault_is_recorded_with_its_error(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_TOKEN", TOKEN)
    config = config_from_dict(http_config(tmp_path, fake.base_url), tmp_path)
    objective = http_objective(config)
    try:
        params = {"temperature": 0.3, "top_p": 1.0}
        good = objective(params | {"model": "good"})
        assert good.notes == []
        assert good.metrics["quality"] == 1.0  # p(0.3, 1.0) = 1
        assert good.metrics["input_tokens"] == 10
        assert good.metrics["output_tokens"] == 16
        assert good.metrics["cost_usd"] == pytest.approx((10 * 1 + 16 * 2) / 1e6)
        assert 0 < good.metrics["latency_ms"] < 1000
        flaky = objective(params | {"model": "flaky"})
        assert flaky.metrics["quality"] == 1.0
        # a model's prices replace the defaults (its input price is 0 here)
        assert flaky.metrics["cost_usd"] == pytest.approx(16 * 4 / 1e6)
        assert len(flaky.notes) == 2 * 4  # a 429 then a 500 for each test case
        assert "case 'c0': attempt 1: HTTP 429" in flaky.notes[0]
        assert "case 'c0': attempt 2: HTTP 500" in flaky.notes[1]
        expected = {
            "broken": "case 'c0': HttpCallError: HTTP 500",
            "garbage": "the response is not JSON: HTTP 200",
            "slow": f"timeout after {TIMEOUT} s (gave up after 3 attempts",
            "leaky": "HTTP 503",
        }
        for model, message in expected.items():
            with pytest.raises(HttpCallError) as info:
                objective(params | {"model": model})
            assert message in str(info.value), (model, str(info.value))
            assert TOKEN not in str(info.value)
        assert fake.requests["broken"] == 3  # retried twice
        assert fake.requests["garbage"] == 1  # a bad body is not retried
        assert fake.requests["slow"] == 3
        # the server echoed the token; the error shows it masked
        with pytest.raises(HttpCallError, match=r"Bearer \*\*\*"):
            objective(params | {"model": "leaky"})
    finally:
        objective.close()


def test_scripted_faults_are_retried(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_TOKEN", TOKEN)
    config = config_from_dict(http_config(tmp_path, fake.base_url), tmp_path)
    objective = http_objective(config)
    try:
        fake.script = [502, "sleep"]  # two faults, then the third attempt answers
        result = objective({"temperature": 0.3, "top_p": 1.0, "model": "good"})
        assert result.notes == [
            "case 'c0': attempt 1: HTTP 502: '{\"error\": \"forced 502\"}'",
            f"case 'c0': attempt 2: timeout after {TIMEOUT} s",
        ]
        assert result.metrics["quality"] == 1.0
        fake.script = [429, 500, 503]  # retries=2: three faults exhaust them
        with pytest.raises(HttpCallError, match="gave up after 3 attempts"):
            objective({"temperature": 0.3, "top_p": 1.0, "model": "good"})
        # a 400 is never retried
        fake.script = [400]
        with pytest.raises(HttpCallError, match=r"HTTP 400.*not retried"):
            objective({"temperature": 0.3, "top_p": 1.0, "model": "good"})
    finally:
        objective.close()


def test_optimizer_finds_the_best_region_and_records_faults(
    tmp_path, fake, monkeypatch
):
    monkeypatch.setenv("FAKE_LLM_TOKEN", TOKEN)
    result = run_optimization(
        config_from_dict(http_config(tmp_path, fake.base_url), tmp_path),
        progress=False,
    )
    best = result.best_config
    assert best["model"] in ("good", "flaky"), best
    assert probability(best["temperature"], best["top_p"]) > 0.5, best
    out = tmp_path / "out"
    detail = json.loads((out / "detailed_results.json").read_text())
    evaluations = [e for g in detail["generations"] for e in g["evaluations"]]
    assert len(evaluations) == 4 * 25
    by_model = {
        m: [e for e in evaluations if e["config"]["model"] == m] for m in MODELS
    }
    faulty = [e for m in ("broken", "garbage", "slow", "leaky") for e in by_model[m]]
    assert faulty  # some faulty configurations were tried (they drop out quickly)
    assert sum(e["error"] is not None for e in evaluations) == len(faulty)
    signature = {
        "broken": "HTTP 500",
        "garbage": "not JSON",
        "slow": f"timeout after {TIMEOUT} s",
        "leaky": "Bearer ***",
    }
    for model, text in signature.items():
        for e in by_model[model]:
            assert e["error"] and text in e["error"], e
            assert e["reward"] == 0.0
    for e in by_model["good"] + by_model["flaky"]:
        assert e["error"] is None, e
    if by_model["flaky"]:
        notes = [n for e in by_model["flaky"] for n in e["notes"]]
        assert any("HTTP 429" in n for n in notes)
    report = (out / "report.md").read_text()
    assert "Failed evaluations" in report and "`http`" in report
    if by_model["flaky"]:
        assert "faults retried, see notes" in report
    # the token is in no file the run wrote
    for path in out.iterdir():
        assert TOKEN not in path.read_bytes().decode("latin-1"), path.name
    assert "FAKE_LLM_TOKEN" in (out / "detailed_results.json").read_text()


def test_judges(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_TOKEN", TOKEN)
    monkeypatch.setenv("JUDGE_TOKEN", TOKEN)
    (tmp_path / "grader.py").write_text(
        textwrap.dedent(
            """
            def grade(answer, case):
                return 0.5 if answer.startswith("a") else 0.0
            """
        )
    )
    params = {"temperature": 0.3, "top_p": 1.0, "model": "good"}
    judges = {
        "exact": ({"type": "exact"}, 1.0),
        "exact_case": ({"type": "exact", "ignore_case": True}, 1.0),
        "contains": ({"type": "contains"}, 1.0),
        "regex": ({"type": "regex"}, 1.0),
        "python": ({"type": "python", "target": "grader.py:grade"}, 0.5),
        "llm": (
            {
                "type": "llm",
                "base_url": fake.base_url,
                "model": "judge",
                "token_env": "JUDGE_TOKEN",
            },
            1.0,
        ),
    }
    for name, (judge, quality) in judges.items():
        data = http_config(tmp_path, fake.base_url, judge=judge)
        objective = http_objective(config_from_dict(data, tmp_path))
        try:
            got = objective(params)
            assert got.metrics["quality"] == quality, name
            if name == "llm":  # a wrong answer gets the judge's 0.25
                low = objective(params | {"temperature": 2.0})
                assert low.metrics["quality"] == pytest.approx(0.25)
        finally:
            objective.close()
    # json_field: the answer must be JSON with the field
    cases = [{"input": "q1", "expected": "a1"}]
    (tmp_path / "json_cases.json").write_text(json.dumps(cases))
    data = http_config(
        tmp_path,
        fake.base_url,
        judge={"type": "json_field", "field": "answer"},
        test_cases="json_cases.json",
    )
    objective = http_objective(config_from_dict(data, tmp_path))
    try:
        assert objective(params).metrics["quality"] == 0.0  # "a1" is not JSON
    finally:
        objective.close()
    from convergence_jax.optimize.http import _make_judge

    judge = _make_judge(
        config_from_dict(data, tmp_path), objective.caller
    )  # closed caller unused
    assert judge('```json\n{"answer": "a1"}\n```', {"expected": "a1"}) == 1.0
    assert judge('{"answer": "b"}', {"expected": "a1"}) == 0.0


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["objective"]["api"].update(request={"x": "{temprature}"}),
            "objective.api.request.x: unknown placeholder {temprature} (did you mean "
            "'temperature'?)",
        ),
        (
            lambda d: d["objective"].update(test_cases="missing.json"),
            "objective.test_cases: no such file",
        ),
        (
            lambda d: d["metrics"].update(quallity={"min": 0, "max": 1}),
            "metrics.quallity: an http objective returns",
        ),
        (
            lambda d: d["objective"]["api"].pop("base_url"),
            "objective.api.base_url: the openai_chat preset needs",
        ),
        (
            lambda d: d["objective"]["api"].update(headers={"Authorization": "x"}),
            "objective.api.headers.Authorization: put credentials in the environment",
        ),
        (
            lambda d: d["objective"]["api"].update(retries=-1),
            "objective.api.retries: must be >= 0",
        ),
        (
            lambda d: d["objective"]["api"]["auth"].update(typ="bearer"),
            "objective.api.auth.typ: unknown key (did you mean 'type'?)",
        ),
        (
            lambda d: d["objective"].update(judge={"type": "json_field"}),
            "objective.judge.field",
        ),
        (
            lambda d: d["objective"].update(judge={"type": "llm", "model": "m"}),
            "objective.judge.base_url",
        ),
    ],
)
def test_bad_http_config_names_the_key(tmp_path, edit, message):
    data = http_config(tmp_path, "http://127.0.0.1:9/v1")
    edit(data)
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, tmp_path)
    assert message in str(info.value)


def test_missing_token_fails_before_any_call(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("FAKE_LLM_TOKEN", raising=False)
    config = config_from_dict(http_config(tmp_path, fake.base_url), tmp_path)
    with pytest.raises(ConfigError, match="'FAKE_LLM_TOKEN' is not set"):
        run_optimization(config, progress=False)
    assert sum(fake.requests.values()) == 0
    # the openai_chat preset defaults to bearer auth from OPENAI_API_KEY
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = http_config(tmp_path, fake.base_url)
    del data["objective"]["api"]["auth"]
    config = config_from_dict(data, tmp_path)
    with pytest.raises(ConfigError, match="'OPENAI_API_KEY' is not set"):
        http_objective(config)


def test_plain_endpoint_with_header_auth_and_custom_fields(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_AUTH", f"Bearer {TOKEN}")
    data = http_config(tmp_path, fake.base_url)
    data["objective"]["api"] = {
        "endpoint": fake.base_url + "/chat/completions",
        "method": "POST",
        "auth": {"type": "header", "header": "Authorization", "token_env": "FAKE_AUTH"},
        "request": {
            "model": "{model}",
            "temperature": "{temperature}",
            "top_p": "{top_p}",
            "messages": [{"role": "user", "content": "{input}"}],
        },
        "response": {
            "text": "choices.0.message.content",
            "output_tokens": "usage.completion_tokens",
        },
        "pricing": {"output_per_million": 1000.0},
    }
    config = config_from_dict(data, tmp_path)
    objective = http_objective(config)
    try:
        got = objective({"temperature": 0.3, "top_p": 1.0, "model": "good"})
        assert got.metrics["quality"] == 1.0
        assert got.metrics["input_tokens"] == 0.0  # no field configured
        assert got.metrics["cost_usd"] == pytest.approx(20 * 1000.0 / 1e6)
        with pytest.raises(HttpCallError) as info:
            objective({"temperature": 0.3, "top_p": 1.0, "model": "leaky"})
        assert TOKEN not in str(info.value) and "***" in str(info.value)
    finally:
        objective.close()


def test_example_openai_config_runs_against_a_local_server(fake, monkeypatch):
    """examples/openai_chat.yaml with its base_url pointed at the fake server."""
    import dataclasses

    from convergence_jax.optimize import load_config
    from tests.optimize.test_run_optimization import ROOT

    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    config = load_config(ROOT / "examples" / "openai_chat.yaml")
    assert config.objective.api.auth.token_env == "OPENAI_API_KEY"
    api = dataclasses.replace(config.objective.api, base_url=fake.base_url)
    config = dataclasses.replace(
        config, objective=dataclasses.replace(config.objective, api=api)
    )
    objective = http_objective(config)
    try:
        params = {"temperature": 0.3, "top_p": 1.0, "model": "gpt-4o-mini"}
        got = objective(params | {"max_tokens": 64})
    finally:
        objective.close()
    assert got.metrics["quality"] == 0.0  # the fake knows none of these answers
    assert got.metrics["output_tokens"] == 20
    assert got.metrics["cost_usd"] == pytest.approx((10 * 0.15 + 20 * 0.60) / 1e6)
    assert fake.requests["gpt-4o-mini"] == 6


def test_init_http_starter_runs_against_a_local_server(fake, tmp_path, monkeypatch):
    """`convergence-jax init --objective http` writes a config and test cases that
    run as written once base_url points at a server (here the fake one)."""
    from convergence_jax import cli

    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    path = tmp_path / "c.yaml"
    assert cli.main(["init", "--no-input", "--objective", "http", "--path", str(path),
                     "--output-dir", str(tmp_path / "out")]) == 0  # fmt: skip
    cases = json.loads((tmp_path / "test_cases.json").read_text())
    assert all({"input", "expected"} <= set(c) for c in cases)
    flags = ["--objective.api.base-url", fake.base_url, "--optimizer.generations",
             "1", "--optimizer.population-size", "4", "--optimizer.batch-size", "4",
             "--optimizer.evaluations-per-generation", "4", "--quiet"]  # fmt: skip
    assert cli.main(["optimize", str(path), *flags]) == 0
    detail = json.loads((tmp_path / "out" / "detailed_results.json").read_text())
    evaluations = detail["generations"][0]["evaluations"]
    assert len(evaluations) == 4
    assert all(e["error"] is None for e in evaluations)
    assert sum(fake.requests.values()) == 4 * len(cases)
