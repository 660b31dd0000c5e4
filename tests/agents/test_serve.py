"""Agent checkpoints (save / load) and the OpenAI-compatible chat endpoint."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient

from convergence_jax import lm
from convergence_jax.agents.export import (
    AgentCheckpointError,
    GenerationDefaults,
    load_agent,
    load_chat_agent,
    save_agent,
)
from convergence_jax.agents.serve import create_chat_app

KEY = "agent-key-7f3e"
AUTH = {"Authorization": f"Bearer {KEY}"}


def tiny_config(tokenizer, **overrides):
    return lm.LMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        **overrides,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = lm.ByteTokenizer()
    config = tiny_config(tokenizer)
    params = lm.init_params(jax.random.key(0), config)
    folder = tmp_path_factory.mktemp("agent") / "tiny"
    save_agent(
        folder,
        params,
        config,
        tokenizer,
        "Be brief.",
        generation={"temperature": 0.0, "max_tokens": 8},
        metadata={"note": "random weights"},
    )
    return folder, params, config


@pytest.fixture(scope="module")
def client(checkpoint):
    agent, meta = load_chat_agent(checkpoint[0])
    with TestClient(create_chat_app(agent, meta.name, KEY)) as c:
        yield c, agent


def chat(client, headers=AUTH, **body):
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return client.post("/v1/chat/completions", json=body, headers=headers)


# ----------------------------------------------------------------- checkpoints


def test_save_load_round_trip(checkpoint):
    folder, params, config = checkpoint
    assert {p.name for p in folder.iterdir()} == {
        "agent.json",
        "config.json",
        "model.safetensors",
        "tokenizer_spec.json",
    }
    loaded, loaded_config, tokenizer, meta = load_agent(folder)
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert meta.name == "tiny" and meta.system_prompt == "Be brief."
    assert meta.generation == GenerationDefaults(temperature=0.0, max_tokens=8)
    assert meta.metadata == {"note": "random weights"}
    text = "<|im_start|>user\nhé<|im_end|>"
    assert tokenizer.encode(text) == lm.ByteTokenizer().encode(text)
    assert tokenizer.stop_tokens == lm.ByteTokenizer().stop_tokens


def test_hf_tokenizer_round_trip(checkpoint, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<eos>": 3}
    for ch in "abcdefghijklmnopqrstuvwxyz \n":
        vocab.setdefault(ch, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    raw.add_special_tokens(["<pad>", "<|im_start|>", "<|im_end|>", "<eos>"])
    tokenizer = lm.HFTokenizer(raw, pad_token="<pad>", eos_token="<eos>")
    _, params, config = checkpoint  # 261 embedding rows: room for its 32 ids
    save_agent(tmp_path / "hf", params, config, tokenizer)
    _, _, loaded, _ = load_agent(tmp_path / "hf")
    assert isinstance(loaded, lm.HFTokenizer)
    assert (loaded.pad_id, loaded.eos_id) == (0, 3)
    text = "<|im_start|>user\nhi there<|im_end|>"
    assert loaded.encode(text) == tokenizer.encode(text)


def test_missing_and_corrupt_folders_say_which_file(checkpoint, tmp_path):
    import shutil

    with pytest.raises(AgentCheckpointError, match="no such agent checkpoint"):
        load_agent(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AgentCheckpointError, match=r"agent\.json: missing"):
        load_agent(tmp_path / "empty")
    cases = {
        "agent.json": ("{not json", r"agent\.json: not valid JSON"),
        "tokenizer_spec.json": ('{"type": "sentencepiece"}', "type 'byte' or 'hf'"),
        "model.safetensors": ("truncated", "cannot load the model"),
    }
    for name, (content, message) in cases.items():
        broken = tmp_path / name.replace(".", "_")
        shutil.copytree(checkpoint[0], broken)
        (broken / name).write_text(content)
        with pytest.raises(AgentCheckpointError, match=message):
            load_agent(broken)
    broken = tmp_path / "no_model"
    shutil.copytree(checkpoint[0], broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(AgentCheckpointError, match="no model.safetensors"):
        load_agent(broken)
    agent = json.loads((checkpoint[0] / "agent.json").read_text())
    (broken / "agent.json").write_text(json.dumps(agent | {"generation": {"top_p": 2}}))
    with pytest.raises(AgentCheckpointError, match=r"top_p must be in \(0, 1\]"):
        load_agent(broken)


def test_save_rejects_a_tokenizer_that_does_not_fit(tmp_path):
    tokenizer = lm.ByteTokenizer()
    small = dataclasses.replace(tiny_config(tokenizer), vocab_size=256)
    with pytest.raises(AgentCheckpointError, match="does not fit the model"):
        save_agent(tmp_path / "x", {}, small, tokenizer)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ the server


def test_completion_has_openai_shape_and_honours_max_tokens(client):
    c, agent = client
    r = chat(c, model="tiny", max_tokens=5, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the checkpoint's system prompt is applied: its tokens are counted
    prompt = agent.backend.encode(agent.prompt([{"role": "user", "content": "Hi"}]))
    assert usage["prompt_tokens"] == len(prompt)
    # random weights: a stop token (2 ids of 261) is unlikely within 5 tokens
    assert choice["finish_reason"] == "length" and usage["completion_tokens"] == 5
    # max_completion_tokens is OpenAI's newer name
    r = chat(c, max_completion_tokens=2, temperature=0)
    assert r.json()["usage"]["completion_tokens"] <= 2
    # the same greedy answer, cut shorter: max_tokens is a prefix, not a new draw
    long = chat(c, max_tokens=8, temperature=0).json()["choices"][0]["message"]
    short = chat(c, max_tokens=3, temperature=0).json()["choices"][0]
    assert short["finish_reason"] == "length"
    ids = agent.backend.tokenizer.encode
    assert ids(long["content"])[:3] == ids(short["message"]["content"])


def test_temperature_zero_is_deterministic_and_seeds_reproduce(client):
    c, _ = client

    def text(**kw):
        r = chat(c, max_tokens=8, **kw)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    greedy = {text(temperature=0.0) for _ in range(3)}
    assert len(greedy) == 1
    assert text(temperature=1.0, seed=7) == text(temperature=1.0, seed=7)
    # random weights: sampled answers of 8 tokens from 261 differ across seeds
    assert len({text(temperature=1.0, seed=s) for s in range(4)}) > 1
    # top_p -> 0 keeps only the most likely token: greedy whatever the seed
    assert text(temperature=1.0, top_p=1e-6, seed=3) == greedy.pop()


def test_models_and_health(client):
    c, _ = client
    assert c.get("/healthz").json() == {"status": "ok", "model": "tiny"}
    r = c.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny"]
    assert c.get("/v1/models").status_code == 401


def test_api_key_is_checked(client):
    c, _ = client
    for headers, message in (
        ({}, "missing API key"),
        ({"Authorization": "Bearer wrong"}, "incorrect API key"),
        ({"Authorization": f"Basic {KEY}"}, "incorrect API key"),
    ):
        r = chat(c, headers=headers)
        assert r.status_code == 401
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and message in error["message"]
    # the key is checked before the body is read
    r = chat(c, headers={}, messages=[], temperature=-1)
    assert r.status_code == 401
    r = c.post("/v1/chat/completions", content=b"{oops")
    assert r.status_code == 401


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"temperature": -0.5}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": "Hi"}, "messages", "list"),
        ({"messages": [{"content": "Hi"}]}, "messages[0].role", "Field required"),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "one of",
        ),
        ({"n": 2}, "n", "n must be 1"),
        ({"stream": True}, "stream", "not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"best_of": 3}, "best_of", "unknown parameter"),
        ({"seed": -1}, None, "seed must be an int >= 0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
            "only text parts",
        ),
        ({"messages": [{"role": "user", "content": "x" * 200}]}, None, "context"),
    ],
)
def test_bad_requests_get_openai_400_bodies(client, body, param, message):
    c, _ = client
    r = chat(c, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert message in error["message"]


def test_other_errors(client):
    c, _ = client
    r = chat(c, model="gpt-4o")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    headers = AUTH | {"Content-Type": "application/json"}
    r = c.post("/v1/chat/completions", content=b"{oops", headers=headers)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    # a JSON body is read whatever the Content-Type says (curl -d sends a form)
    raw = json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode()
    r = c.post("/v1/chat/completions", content=raw, headers=AUTH)
    assert r.status_code == 200, r.text
    r = c.post("/v1/chat/completions", content=b"[1, 2]", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] is None
    schema = c.get("/openapi.json").json()["paths"]["/v1/chat/completions"]
    body = schema["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"messages", "temperature", "top_p", "max_tokens"} <= set(body["properties"])
    # accepted as sent: fields that change nothing here
    assert chat(c, user="u1", presence_penalty=0, max_tokens=2).status_code == 200
    # content parts of type text are joined
    parts = [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]
    a = chat(c, messages=[{"role": "user", "content": parts}], temperature=0)
    b = chat(c, temperature=0)
    assert a.json()["choices"][0] == b.json()["choices"][0]


def test_stop_strings_cut_the_answer(client):
    c, _ = client
    full = chat(c, temperature=0, max_tokens=8).json()["choices"][0]["message"]
    text = full["content"]
    assert len(text) >= 3
    r = chat(c, temperature=0, max_tokens=8, stop=["zzz", text[2]]).json()
    assert r["choices"][0]["message"]["content"] == text[: text.index(text[2])]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_open_without_a_key(checkpoint):
    from convergence_jax.agents.agent import StubBackend

    app = create_chat_app(StubBackend(["fixed answer"], cycle=True), "stub", None)
    with TestClient(app) as c:
        r = chat(c, headers={})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "fixed answer"
        assert c.get("/v1/models").status_code == 200


def test_the_serve_command_warms_up_and_says_it_is_open(checkpoint, monkeypatch):
    from convergence_jax.agents.cli import AgentServeArgs, chat_server

    monkeypatch.delenv("CONVERGENCE_AGENT_API_KEY", raising=False)
    lines = []
    server = chat_server(AgentServeArgs(checkpoint=str(checkpoint[0])), lines.append)
    assert lines[0].startswith("compiled the generation in")
    assert "OPEN: $CONVERGENCE_AGENT_API_KEY is not set" in lines[1]
    assert (server.config.host, server.config.port) == ("127.0.0.1", 8000)
    with TestClient(server.config.app) as c:
        assert chat(c, headers={}, max_tokens=2).status_code == 200
