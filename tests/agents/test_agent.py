"""MultiTurnAgent over its three backends: message validation, system prompt and
plans, the stub, an OpenAI-compatible endpoint (a fake server on 127.0.0.1) and
our JAX model (a tiny transformer, compiled once for the module)."""

import jax
import numpy as np
import pytest

from convergence_jax import lm
from convergence_jax.agents.agent import (
    Completion,
    JaxBackend,
    MultiTurnAgent,
    OpenAIBackend,
    Plan,
    StubBackend,
    check_messages,
)
from convergence_jax.lm.generate import _generate
from convergence_jax.optimize.http import HttpCallError
from tests.agents.fake_openai_server import FakeOpenAIServer

TOKEN = "sk-agents-test-41c7"
USER = [{"role": "user", "content": "Hi, where is my order?"}]


# --------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "messages, match",
    [
        ("hello", "must be a list"),
        ({"role": "user", "content": "x"}, "must be a list"),
        (["hello"], r"messages\[0\] must be a dict"),
        ([{"role": "user", "content": "x", "extra": 1}], "unknown keys"),
        ([{"role": "robot", "content": "x"}], "role must be one of"),
        ([{"role": "user"}], "has no 'content'"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([{"role": "user", "content": None}], "content must be a string"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "only an assistant"),
        ([{"role": "tool", "content": "x", "tool_call_id": 7}], "tool_call_id"),
        ([], "empty"),
    ],
)
def test_bad_messages_raise(messages, match):
    with pytest.raises(ValueError, match=match):
        check_messages(messages)
    agent = MultiTurnAgent(StubBackend(["ok"]))
    with pytest.raises(ValueError, match=match):
        agent.generate_response(messages)


def test_tool_call_messages_are_valid():
    messages = check_messages(
        [
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "f"}}],
            },
            {"role": "tool", "content": "{}", "name": "f", "tool_call_id": "c1"},
        ]
    )
    assert len(messages) == 3


# ------------------------------------------------------------------------- stub


def test_stub_cycles_in_order_and_records_calls():
    backend = StubBackend(["one", "two words"])
    agent = MultiTurnAgent(backend)
    assert [agent.generate_response(USER) for _ in range(3)] == [
        "one",
        "two words",
        "one",
    ]
    assert agent.last_completion == Completion("one", 5, 1, "stop")
    assert len(backend.calls) == 3


def test_stub_without_cycle_runs_out():
    agent = MultiTurnAgent(StubBackend(["only"], cycle=False))
    agent.generate_response(USER)
    with pytest.raises(RuntimeError, match="cycle=False"):
        agent.generate_response(USER)


def test_stub_function_of_messages_and_max_tokens():
    agent = MultiTurnAgent(StubBackend(lambda m: "echo: " + m[-1]["content"]))
    assert agent.generate_response(USER) == "echo: " + USER[0]["content"]
    completion = agent.complete(USER, {"max_tokens": 2})
    assert completion.text == "echo: Hi,"
    assert completion.finish_reason == "length"


@pytest.mark.parametrize("responses", [[], "text", [1], 5])
def test_stub_bad_responses(responses):
    with pytest.raises(ValueError):
        StubBackend(responses)


def test_stub_function_must_return_text():
    with pytest.raises(ValueError, match="not a string"):
        StubBackend(lambda m: 3).complete(USER)


# ------------------------------------------------------------- system, plans


def test_system_prompt_is_prepended_unless_messages_have_one():
    backend = StubBackend(["ok"])
    agent = MultiTurnAgent(backend, system_prompt="Be brief.")
    agent.generate_response(USER)
    assert backend.calls[-1][0] == [{"role": "system", "content": "Be brief."}, *USER]
    own = [{"role": "system", "content": "Mine."}, *USER]
    agent.generate_response(own)
    assert backend.calls[-1][0] == own


def test_plan_is_injected_replaced_and_advanced_per_conversation():
    backend = StubBackend(["ok"])
    agent = MultiTurnAgent(
        backend,
        system_prompt="Be brief.",
        plan={"goal": "refund", "steps": ["ask order id", "refund"]},
    )
    agent.generate_response(USER)
    sent = backend.calls[-1][0]
    assert sent[0]["content"] == "Be brief."
    assert sent[1]["role"] == "system"
    assert "Goal: refund" in sent[1]["content"]
    assert "1. [current] ask order id" in sent[1]["content"]
    assert "2. [todo] refund" in sent[1]["content"]

    agent.generate_response(USER, {"advance_plan": True, "conversation_id": "a"})
    assert "1. [done] ask order id" in backend.calls[-1][0][1]["content"]
    assert "2. [current] refund" in backend.calls[-1][0][1]["content"]
    assert agent.plan("a").current_step == 1
    assert agent.plan("default").current_step == 0  # other conversations untouched
    agent.generate_response(USER, {"advance_plan": True, "conversation_id": "a"})
    assert agent.plan("a").done
    assert "All steps are done." in backend.calls[-1][0][1]["content"]

    agent.generate_response(
        USER, {"plan": {"goal": "ship", "steps": ["track"]}, "conversation_id": "a"}
    )
    assert "Goal: ship" in backend.calls[-1][0][1]["content"]
    agent.generate_response(USER, {"plan": None, "conversation_id": "a"})
    assert len(backend.calls[-1][0]) == 2  # system prompt + user, no plan
    agent.reset("a")
    assert agent.plan("a").goal == "refund"  # back to the initial plan


def test_plan_goes_after_the_conversations_own_system_message():
    backend = StubBackend(["ok"])
    agent = MultiTurnAgent(backend, plan=Plan("help", ("greet",)))
    agent.generate_response([{"role": "system", "content": "Mine."}, *USER])
    roles = [m["role"] for m in backend.calls[-1][0]]
    assert roles == ["system", "system", "user"]
    assert backend.calls[-1][0][0]["content"] == "Mine."


@pytest.mark.parametrize(
    "context, match",
    [
        ({"colour": "red"}, "unknown keys"),
        ("plan", "context must be a dict"),
        ({"advance_plan": True}, "has no plan"),
        ({"plan": {"steps": ["a"]}}, "needs a 'goal'"),
        ({"plan": {"goal": "g", "when": 1}}, "unknown keys"),
        ({"plan": {"goal": "g", "steps": ["a"], "current_step": 5}}, "current_step"),
        ({"plan": "do things"}, "a plan must be"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"conversation_id": 3}, "conversation_id"),
    ],
)
def test_bad_context_raises(context, match):
    agent = MultiTurnAgent(StubBackend(["ok"]))
    with pytest.raises(ValueError, match=match):
        agent.generate_response(USER, context)


def test_sampling_context_reaches_the_backend():
    backend = StubBackend(["ok"])
    MultiTurnAgent(backend).generate_response(
        USER, {"temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": 1}
    )
    assert backend.calls[-1][1] == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 5,
        "seed": 1,
    }


def test_bad_agent_arguments():
    with pytest.raises(ValueError, match="complete"):
        MultiTurnAgent(object())
    with pytest.raises(ValueError, match="system_prompt"):
        MultiTurnAgent(StubBackend(["ok"]), system_prompt=3)
    with pytest.raises(ValueError, match="goal"):
        Plan("")


# ------------------------------------------------------------------ OpenAI API


@pytest.fixture
def server():
    srv = FakeOpenAIServer(
        reply=lambda body: "answer to " + body["messages"][-1]["content"], token=TOKEN
    )
    yield srv
    srv.close()


def openai_backend(server, **kwargs):
    defaults = dict(token_env="AGENTS_TEST_TOKEN", timeout_s=5.0, backoff_s=0.01)
    return OpenAIBackend(server.base_url, "fake-model", **{**defaults, **kwargs})


def test_openai_backend_sends_token_messages_and_sampling(server, monkeypatch):
    monkeypatch.setenv("AGENTS_TEST_TOKEN", TOKEN)
    backend = openai_backend(server, temperature=0.2, max_tokens=50)
    agent = MultiTurnAgent(backend, system_prompt="Be brief.")
    completion = agent.complete(USER, {"top_p": 0.5, "max_tokens": 9})
    assert completion.text == "answer to " + USER[0]["content"]
    assert completion.prompt_tokens == 7 and completion.completion_tokens == 7
    assert completion.finish_reason == "stop"
    request = server.requests[-1]
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = request["body"]
    assert body["model"] == "fake-model"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *USER]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.5, 9)
    backend.close()


def test_openai_backend_retries_on_500(server, monkeypatch):
    monkeypatch.setenv("AGENTS_TEST_TOKEN", TOKEN)
    backend = openai_backend(server, retries=2)
    server.script = [500, 503]
    assert backend.complete(USER).text.startswith("answer to")
    assert len(server.requests) == 3
    assert len(backend.notes) == 2 and "HTTP 500" in backend.notes[0]
    server.script = [500, 500, 500]
    with pytest.raises(HttpCallError, match="gave up after 3 attempts"):
        backend.complete(USER)
    server.script = ["garbage"]
    with pytest.raises(HttpCallError, match="not JSON"):
        backend.complete(USER)
    backend.close()


def test_openai_backend_token_errors(server, monkeypatch):
    monkeypatch.delenv("AGENTS_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="AGENTS_TEST_TOKEN"):
        openai_backend(server)
    monkeypatch.setenv("AGENTS_TEST_TOKEN", "sk-wrong-token-9")
    backend = openai_backend(server)
    with pytest.raises(HttpCallError, match="401") as error:
        backend.complete(USER)
    assert "sk-wrong-token-9" not in str(error.value)
    backend.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"base_url": "localhost:8000"}, "base_url"),
        ({"model": ""}, "model"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"retries": -1}, "retries"),
        ({"temperature": -0.5}, "temperature"),
    ],
)
def test_openai_backend_bad_arguments(kwargs, match):
    base = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "token_env": None}
    with pytest.raises(ValueError, match=match):
        OpenAIBackend(**{**base, **kwargs})


# --------------------------------------------------------------------- JAX model


@pytest.fixture(scope="module")
def tiny():
    tokenizer = lm.ByteTokenizer()
    config = lm.LMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        max_position_embeddings=256,
    )
    params = lm.init_params(jax.random.key(0), config)
    backend = JaxBackend(
        params, config, tokenizer, max_new_tokens=12, min_prompt_bucket=128
    )
    return tokenizer, config, params, backend


def test_jax_greedy_equals_lm_generate(tiny):
    tokenizer, config, params, backend = tiny
    completion = backend.complete(USER)
    prompt = tokenizer.apply_chat_template(USER)
    assert completion.prompt_tokens == len(prompt)
    tokens, mask = lm.pad_batch([prompt], tokenizer.pad_id, 128)
    reference = lm.generate(
        jax.random.key(0),
        params,
        config,
        tokens,
        mask,
        max_new_tokens=16,
        temperature=0.0,
        stop_tokens=tokenizer.stop_tokens,
        pad_id=tokenizer.pad_id,
    )
    ids = np.asarray(reference.tokens[0, 0])[:12]
    ids = ids[np.asarray(reference.mask[0, 0])[:12] > 0].tolist()
    stops = [i for i, t in enumerate(ids) if t in tokenizer.stop_tokens]
    expected = ids[: stops[0]] if stops else ids
    assert completion.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert completion.completion_tokens == (stops[0] + 1 if stops else len(ids))
    assert completion.finish_reason == ("stop" if stops else "length")


def test_jax_growing_conversation_does_not_recompile(tiny):
    tokenizer, config, params, backend = tiny
    agent = MultiTurnAgent(backend, system_prompt="Be brief.")
    messages = list(USER)
    agent.generate_response(messages)
    compiled = _generate._cache_size()
    lengths = []
    for turn in range(3):
        reply = agent.generate_response(
            messages,
            {"temperature": 0.5 + 0.2 * turn, "top_p": 0.9, "max_tokens": 4 + turn},
        )
        assert agent.last_completion.completion_tokens <= 4 + turn
        lengths.append(agent.last_completion.prompt_tokens)
        assert isinstance(reply, str)
        messages += [  # short turns: the random model's bytes re-encode longer
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"And turn {turn}?"},
        ]
    assert lengths[0] < lengths[1] < lengths[2] <= 128
    assert _generate._cache_size() == compiled
    assert backend.compiled_shapes == {(128, 16)}


def test_jax_seed_is_reproducible_and_calls_differ(tiny):
    _, _, _, backend = tiny
    a = backend.complete(USER, temperature=1.0, seed=3)
    b = backend.complete(USER, temperature=1.0, seed=3)
    assert a == b
    draws = {backend.complete(USER, temperature=1.0).text for _ in range(3)}
    assert len(draws) > 1


def test_jax_bad_input(tiny):
    tokenizer, config, params, backend = tiny
    with pytest.raises(ValueError, match="max_position_embeddings"):
        backend.complete([{"role": "user", "content": "x" * 300}])
    with pytest.raises(ValueError, match="params do not match"):
        JaxBackend({"embed": {}}, config, tokenizer)
    with pytest.raises(ValueError, match="LMConfig"):
        JaxBackend(params, {"vocab_size": 3}, tokenizer)
    with pytest.raises(ValueError, match="top_p"):
        backend.complete(USER, top_p=1.5)
    with pytest.raises(ValueError, match="role"):
        backend.complete([{"role": "bot", "content": "x"}])
