"""The optimizer's society (RLP proposals + information gain, SAO pairs) end to end
against a fake OpenAI-compatible server with injected bad replies, and its parsers.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from convergence_jax.cli import main
from convergence_jax.optimize import (
    ConfigError,
    config_from_dict,
    load_config,
    run_optimization,
)
from convergence_jax.optimize.objectives import load_target
from convergence_jax.optimize.society import (
    ReplyError,
    extract_json,
    information_gain,
    parse_predictions,
    parse_proposals,
    parse_ranking,
    validate_config,
)
from convergence_jax.self_improve.pairs import load_pairs
from convergence_jax.spaces import SearchSpace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "society.yaml"
SPACE = {
    "x": {"type": "float", "min": 0.0, "max": 1.0},
    "y": {"type": "int", "min": 0, "max": 10},
    "kind": {"type": "categorical", "choices": ["a", "b", "c"]},
}
OBJECTIVE = """
def score(config):
    bonus = {"a": 0.0, "b": 0.1, "c": 0.05}[config["kind"]]
    return 1.0 - (config["x"] - 0.7) ** 2 - ((config["y"] - 3) / 10) ** 2 + bonus
"""


def true_score(config) -> float:
    bonus = {"a": 0.0, "b": 0.1, "c": 0.05}[config["kind"]]
    return 1.0 - (config["x"] - 0.7) ** 2 - ((config["y"] - 3) / 10) ** 2 + bonus


GOOD_PROPOSALS = [{"x": 0.7, "y": 3, "kind": "b"}, {"x": 0.68, "y": 3, "kind": "b"}]


class FakeSocietyLLM(ThreadingHTTPServer):
    """A simulated OpenAI-compatible chat API on 127.0.0.1 for the society.

    It reads which call a request is from the prompt (``TASK: propose
    configurations (generation g)``, ``TASK: predict rewards (generation g)`` with or
    without the analyst's reasoning, ``TASK: judge (generation g)``). Good replies:
    proposals near the optimum with a line of reasoning; predictions that are the
    objective's true values with the reasoning in context and 0.5 for everything
    without it (so the reasoning carries information); judgements that rank by the
    true value. ``faults[(call, g)]`` replaces the good reply of the first such
    call with ``garbled`` (prose, no JSON), ``invalid_json`` (a broken JSON block),
    ``out_of_range`` (one config outside the space, one with an unknown choice, one
    good), ``http_500``, ``slow`` (sleeps past the client's timeout) or
    ``no_ranking``; every fault served is appended to ``served``.
    """

    daemon_threads = True

    def __init__(self, faults: dict, slow_s: float = 1.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.faults = dict(faults)
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.served: list[tuple[str, int, str]] = []
        self.calls: list[tuple[str, int]] = []
        self.auth: set = set()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def handle_error(self, request, client_address):
        pass  # the client hung up on the slow reply: expected

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self):
        self.shutdown()
        self.server_close()


_TASK = re.compile(
    r"TASK: (propose configurations|predict rewards|judge) \(generation (\d+)\)"
)
_NUMBERED = re.compile(r"^\d+\. (\{.*\})$", re.M)


class _Handler(BaseHTTPRequestHandler):
    server: FakeSocietyLLM

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reply(self, text):
        self._send(
            200,
            {
                "choices": [
                    {"message": {"role": "assistant", "content": text}, "index": 0}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10},
            },
        )

    def do_POST(self):  # noqa: N802 - http.server's naming
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        m = _TASK.search(prompt)
        kind, g = m.group(1), int(m.group(2))
        call = {
            "propose configurations": "propose",
            "judge": "judge",
            "predict rewards": (
                "predict_with" if "analyst's reasoning" in prompt else "predict_without"
            ),
        }[kind]
        with srv.lock:
            srv.calls.append((call, g))
            srv.auth.add(self.headers.get("Authorization"))
            fault = srv.faults.pop((call, g), None)
            if fault:
                srv.served.append((call, g, fault))
        if fault == "http_500":
            return self._send(500, {"error": "internal error"})
        if fault == "slow":
            time.sleep(srv.slow_s)
        if fault == "garbled":
            return self._reply("I think the temperature matters a lot. No JSON here.")
        if fault == "invalid_json":
            return self._reply('```json\n{"predictions": [0.5, oops\n```')
        if fault == "no_ranking":
            return self._reply("Both look fine to me.")
        if call == "propose":
            configs = GOOD_PROPOSALS
            if fault == "out_of_range":
                configs = [
                    {"x": 5.0, "y": 3, "kind": "b"},
                    {"x": 0.7, "y": 3, "kind": "z"},
                    GOOD_PROPOSALS[1],
                ]
            text = (
                "x near 0.7 and y near 3 score best so far; kind b beats a.\n"
                "```json\n" + json.dumps({"configs": configs}) + "\n```"
            )
            return self._reply(text)
        if call.startswith("predict"):
            configs = [json.loads(c) for c in _NUMBERED.findall(prompt)]
            if call == "predict_with":
                predictions = [round(true_score(c), 6) for c in configs]
            else:
                predictions = [0.5] * len(configs)
            return self._reply(json.dumps({"predictions": predictions}))
        a = json.loads(re.search(r"^Response 1: (\{.*\})$", prompt, re.M).group(1))
        b = json.loads(re.search(r"^Response 2: (\{.*\})$", prompt, re.M).group(1))
        best = "1 > 2" if true_score(a) >= true_score(b) else "2 > 1"
        return self._reply(f"The first is closer to the optimum.\nranking: {best}")


FAULTS = {
    ("predict_without", 2): "http_500",
    ("propose", 3): "out_of_range",
    ("predict_with", 3): "invalid_json",
    ("propose", 4): "garbled",
    ("judge", 1): "slow",
    ("judge", 3): "no_ranking",
}
# what each injected fault is recorded as: (generation, agent, call, kind)
EXPECTED_BAD = {
    (2, "rlp", "predict_without", "http_error"),
    (3, "rlp", "propose", "out_of_range"),
    (3, "rlp", "propose", "invalid_config"),
    (3, "rlp", "predict_with", "garbled"),
    (4, "rlp", "propose", "garbled"),
    (1, "sao", "judge", "timeout"),
    (3, "sao", "judge", "garbled"),
}


def society_data(tmp_path, base_url, **society):
    (tmp_path / "objective.py").write_text(OBJECTIVE)
    return {
        "search_space": SPACE,
        "objective": {
            "type": "python",
            "target": "objective.py:score",
            "failure_reward": 0.0,
        },
        "optimizer": {
            "generations": 5,
            "population_size": 6,
            "evaluations_per_generation": 12,
            "batch_size": 3,
            "elites": 1,
            "seed": 3,
        },
        "output": {"dir": str(tmp_path / "run")},
        "society": {
            "enabled": True,
            "learning": {"rlp_enabled": True, "sao_enabled": True},
            "llm": {
                "model": "fake-society",
                "base_url": base_url,
                "api_key_env": "FAKE_SOCIETY_KEY",
                "timeout_s": 0.3,
                "retries": 0,
            },
            "rlp": {"proposals": 3},
            "sao": {"every": 2, "pairs_per_round": 8, "context_size": 3, "judge": True},
        }
        | society,
    }


def society_config(tmp_path, base_url, **society):
    return config_from_dict(society_data(tmp_path, base_url, **society), tmp_path)


def test_society_run_records_every_bad_reply_and_exports_pairs(tmp_path, monkeypatch):
    """The bar: ``convergence-jax optimize`` with the example's society block (its
    LLM pointed at the fake server by a flag) completes, records every bad reply,
    writes the SAO JSONL and the contribution table."""
    monkeypatch.setenv("FAKE_SOCIETY_KEY", "sk-society-secret")
    example = yaml.safe_load(EXAMPLE.read_text())["society"]
    data = society_data(tmp_path, "http://127.0.0.1:9/v1")
    society = data["society"]
    for block in ("rlp", "sao"):
        society[block] = example[block] | society[block]
    society["llm"] = example["llm"] | society["llm"]
    society["sao"]["min_margin"] = 0.0
    path = tmp_path / "society.yaml"
    path.write_text(yaml.safe_dump(data))
    server = FakeSocietyLLM(FAULTS)
    try:
        flags = ["--society.llm.base_url", server.base_url, "--quiet"]
        assert main(["optimize", str(path), *flags]) == 0
    finally:
        server.close()
    out = tmp_path / "run"
    detail = json.loads((out / "detailed_results.json").read_text())
    assert detail["status"] == "complete" and len(detail["generations"]) == 5
    # every injected fault was served, and each is recorded as what it was
    assert sorted(server.served) == sorted((c, g, f) for (c, g), f in FAULTS.items())
    society = detail["society"]
    bad = [
        (b["generation"], b["agent"], b["call"], b["kind"])
        for b in society["bad_replies"]
    ]
    assert sorted(bad) == sorted(EXPECTED_BAD)  # each once
    assert server.auth == {"Bearer sk-society-secret"}
    assert "sk-society-secret" not in (out / "detailed_results.json").read_text()

    records = detail["generations"]
    rlp = {r["generation"]: r["society"]["rlp"] for r in records}
    assert rlp[0] is None  # nothing to reason about before the first generation
    # generations 1 and 2: both good proposals were evaluated in the slots they took
    for g in (1, 2, 3):
        entry = rlp[g]
        assert len(entry["arms"]) == 2
        elites = set(records[g]["society"]["elites"])
        assert elites and not elites & set(entry["arms"])
        for arm, config in zip(entry["arms"], entry["configs"], strict=True):
            assert records[g]["population"][arm]["config"] == config
            measured = [e for e in records[g]["evaluations"] if e["arm"] == arm]
            assert measured and all(e["config"] == config for e in measured)
    assert rlp[1]["configs"] == GOOD_PROPOSALS
    # the out-of-range x was clipped to 1.0, the unknown choice dropped
    assert rlp[3]["configs"] == [{"x": 1.0, "y": 3, "kind": "b"}, GOOD_PROPOSALS[1]]
    assert rlp[3]["proposed"] == 3
    assert rlp[4]["arms"] == [] and rlp[4]["proposals_mean_reward"] is None

    # information gain, recomputed from the recorded evaluations (generation 1 only:
    # generations 2 and 3 lost a prediction call, 4 has no reasoning)
    assert [g for g in rlp if rlp[g] and rlp[g]["prediction"]] == [1]
    r1 = records[1]
    arms = sorted({e["arm"] for e in r1["evaluations"]})
    targets = [
        np.mean([e["reward"] for e in r1["evaluations"] if e["arm"] == a]) for a in arms
    ]
    configs = [r1["population"][a]["config"] for a in arms]
    want = np.mean((0.5 - np.array(targets)) ** 2) - np.mean(
        (np.array([true_score(c) for c in configs]) - np.array(targets)) ** 2
    )
    assert rlp[1]["prediction"]["gain"] == pytest.approx(want, abs=1e-6)
    assert rlp[1]["prediction"]["gain"] > 0

    # contribution table: RLP's near-optimal proposals beat the GA's children
    agents = {a["agent"]: a for a in society["agents"]}
    assert agents["rlp"]["proposals_made"] == 2 + 2 + 3
    assert agents["rlp"]["proposals_evaluated"] == 6
    assert agents["rlp"]["mean_reward"] > agents["rlp"]["ga_children_mean_reward"]
    # ... the same figures recomputed by hand from the evaluations
    mine, theirs = [], []
    for g in (1, 2, 3):
        by_arm = {}
        for e in records[g]["evaluations"]:
            by_arm.setdefault(e["arm"], []).append(e["reward"])
        skip = set(rlp[g]["arms"]) | set(records[g]["society"]["elites"])
        mine += [np.mean(by_arm[a]) for a in rlp[g]["arms"]]
        theirs += [np.mean(v) for a, v in by_arm.items() if a not in skip]
    assert agents["rlp"]["mean_reward"] == pytest.approx(np.mean(mine))
    assert agents["rlp"]["ga_children_mean_reward"] == pytest.approx(np.mean(theirs))
    assert agents["rlp"]["information_gain_rounds"] == 1
    assert agents["rlp"]["bad_replies"] == 5 and agents["sao"]["bad_replies"] == 2
    # GA children: generations 1-4, population minus the elite minus RLP's slots
    assert agents["ga"]["proposals_evaluated"] == 4 * 5 - 6

    # SAO: rounds after generations 1, 3 and the last (4); the file is the last one's
    rounds = society["sao_rounds"]
    assert [r["generation"] for r in rounds] == [1, 3, 4]
    assert rounds[0]["skipped"]["judge_failed"] == 1  # the slow judgement
    assert rounds[1]["skipped"]["judge_failed"] == 1  # the reply with no ranking
    pairs = load_pairs(out / "sao_pairs.jsonl")
    assert len(pairs) == rounds[-1]["exported"] == agents["sao"]["pairs_exported"] > 0
    assert sum(rounds[-1]["filter_counts"].values()) == rounds[-1]["pairs_built"]
    for pair in pairs:
        chosen, rejected = json.loads(pair.chosen), json.loads(pair.rejected)
        assert pair.meta["judge_agrees"] is True  # the fake judge ranks by the truth
        assert true_score(chosen) > true_score(rejected)
        assert pair.prompt.startswith("TASK: propose one configuration")

    report = (out / "report.md").read_text()
    assert "## Society" in report
    assert "| rlp | 7 | 6 |" in report
    assert f"### Bad replies ({len(EXPECTED_BAD)}; the run went on)" in report
    assert report.count("| rlp | propose |") == 3


def test_society_run_resumes_with_its_records(tmp_path, monkeypatch):
    """A society run continued with --resume keeps the society's records of the
    finished generations and adds the new ones (same shapes as the test above: the
    compiled programs are reused)."""
    monkeypatch.setenv("FAKE_SOCIETY_KEY", "k")
    server = FakeSocietyLLM({})
    try:
        data = society_data(tmp_path, server.base_url)
        data["optimizer"]["generations"] = 2
        run_optimization(config_from_dict(data, tmp_path), progress=False)
        data["optimizer"]["generations"] = 4
        data["society"]["llm"]["timeout_s"] = 5.0  # the LLM's settings may change
        config = config_from_dict(data, tmp_path)
        run_optimization(config, progress=False, resume=True)
    finally:
        server.close()
    detail = json.loads((tmp_path / "run" / "detailed_results.json").read_text())
    records = detail["generations"]
    assert [r["society"]["rlp"] is not None for r in records] == [0, 1, 1, 1]
    assert [r["society"]["sao"] is not None for r in records] == [0, 1, 0, 1]
    # the LLM was asked once per call of generations 1-3: nothing was asked again
    proposes = [g for call, g in server.calls if call == "propose"]
    assert proposes == [1, 2, 3]
    agents = {a["agent"]: a for a in detail["society"]["agents"]}
    assert agents["rlp"]["proposals_evaluated"] == 6
    assert agents["rlp"]["information_gain_rounds"] == 3
    assert detail["society"]["bad_replies"] == []
    assert len(load_pairs(tmp_path / "run" / "sao_pairs.jsonl")) > 0


def test_example_config_loads_and_its_objective_runs():
    config = load_config(EXAMPLE)
    s = config.society
    assert s.enabled and s.learning.rlp_enabled and s.learning.sao_enabled
    assert s.llm.api_key_env == "OPENAI_API_KEY" and s.llm.base_url.startswith("https")
    evaluate = load_target(config.objective.target, config.base_dir)
    metrics = evaluate(
        {"temperature": 0.6, "top_p": 0.9, "model": "medium", "max_tokens": 330}
    )
    assert set(metrics) == set(config.metrics)
    assert 0.0 <= metrics["quality"] <= 1.0


def test_society_config_errors(tmp_path, monkeypatch):
    good = "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match="society.llm.base_url: the society's LLM"):
        society_config(tmp_path, None)
    with pytest.raises(ConfigError, match=r"society.llm.modle: unknown key \(did you"):
        society_config(tmp_path, good, llm={"modle": "x", "base_url": good})
    with pytest.raises(ConfigError, match="society.learning.rlp: unknown key"):
        society_config(tmp_path, good, learning={"rlp": True})
    with pytest.raises(ConfigError, match=r"society.rlp.proposals \(6\) must be <="):
        society_config(tmp_path, good, rlp={"proposals": 6})
    with pytest.raises(ConfigError, match="society.sao.file"):
        society_config(tmp_path, good, sao={"file": "pairs.txt"})
    with pytest.raises(ConfigError, match="society.llm.model: name the model"):
        society_config(tmp_path, good, llm={"base_url": good})
    with pytest.raises(ConfigError, match="jax: model runs in-process"):
        society_config(tmp_path, good, llm={"model": "jax:ckpt", "base_url": good})
    data = {
        "search_space": SPACE,
        "metrics": {"quality": {"min": 0.0, "max": 1.0}},
        "society": {"enabled": True, "llm": {"model": "m", "base_url": good}},
    }
    with pytest.raises(ConfigError, match="needs objective.type python or http"):
        config_from_dict(data)
    data["society"]["enabled"] = False  # off: no checks, the jax path as before
    config_from_dict(data)
    monkeypatch.delenv("FAKE_SOCIETY_KEY", raising=False)
    with pytest.raises(ConfigError, match="society.llm.api_key_env: the environment"):
        run_optimization(society_config(tmp_path, good), progress=False)
    python = society_config(tmp_path, None, llm={"model": "python"})
    with pytest.raises(ConfigError, match=r"run_optimization\(config, society_backend"):
        run_optimization(python, progress=False)


def test_sao_round_margin_filters_and_export(tmp_path):
    """SAO on a hand-made history: pairs closer than min_margin are skipped, the
    better-measured configuration is chosen, repeated prompts are dropped as
    near-duplicates, the file holds exactly the kept pairs."""
    from convergence_jax.agents.agent import StubBackend
    from convergence_jax.optimize.config import reward_spec
    from convergence_jax.optimize.society import Society

    data = society_data(tmp_path, None)
    data["society"]["llm"] = {"model": "python"}
    data["society"]["learning"] = {"rlp_enabled": False, "sao_enabled": True}
    data["society"]["sao"] = {
        "pairs_per_round": 60,
        "context_size": 1,
        "min_margin": 0.2,
    }
    config = config_from_dict(data, tmp_path)
    configs = [{"x": 0.1 * i, "y": i, "kind": "a"} for i in range(5)]
    rewards = [0.1, 0.2, 0.5, 0.55, 0.9]
    record = {
        "generation": 0,
        "population": [{"arm": i, "config": c} for i, c in enumerate(configs)],
        "evaluations": [
            {"arm": i, "config": c, "reward": r, "error": None}
            for i, (c, r) in enumerate(zip(configs, rewards, strict=True))
        ],
    }
    stub = StubBackend(["never asked"])
    society = Society(config, reward_spec(config), tmp_path, backend=stub)
    society.elites = []
    society.observe(record, [], last=True)
    sao = record["society"]["sao"]
    assert stub.calls == []  # measured labels: no LLM call
    assert sao["pairs_built"] + sao["skipped"]["margin"] == 60
    assert sao["skipped"]["margin"] > 0
    counts = sao["filter_counts"]
    assert sum(counts.values()) == sao["pairs_built"]
    # one context configuration out of 5: at most 5 distinct prompts survive
    assert counts["near_duplicate"] > 0 and 0 < counts["kept"] <= 5
    pairs = load_pairs(tmp_path / "sao_pairs.jsonl")
    assert len(pairs) == counts["kept"] == sao["exported"]
    assert len({p.prompt for p in pairs}) == len(pairs)
    for pair in pairs:
        gap = pair.meta["chosen_reward"] - pair.meta["rejected_reward"]
        assert gap >= 0.2 - 1e-12
        chosen = json.loads(pair.chosen)
        assert rewards[configs.index(chosen)] == pair.meta["chosen_reward"]
        assert pair.chosen not in pair.prompt and pair.rejected not in pair.prompt


# ----------------------------------------------------------------------------- parsers

SMALL = SearchSpace.from_dict(SPACE)


def test_extract_json_prefers_the_fenced_block_and_keeps_the_prose():
    text = 'Reasoning {not json}.\n```json\n{"configs": [1]}\n```\nDone.'
    value, rest = extract_json(text)
    assert value == {"configs": [1]}
    assert rest == "Reasoning {not json}.\n\nDone."
    value, rest = extract_json('so: {"a": 1} and more')
    assert value == {"a": 1} and rest == "so:  and more"
    for bad in ("no json at all", '```json\n{"a": [1,\n```', ""):
        with pytest.raises(ReplyError) as e:
            extract_json(bad)
        assert e.value.kind == "garbled"


def test_validate_config_clips_rounds_and_rejects():
    config, issues = validate_config({"x": -0.5, "y": 3.0, "kind": "c"}, SMALL)
    assert config == {"x": 0.0, "y": 3, "kind": "c"}
    assert [k for k, _ in issues] == ["out_of_range"]
    assert validate_config({"x": 0.5, "y": 12, "kind": "a"}, SMALL)[0]["y"] == 10
    for raw, needle in [
        ({"x": 0.5, "y": 1}, "missing ['kind']"),
        ({"x": 0.5, "y": 1, "kind": "a", "z": 1}, "unknown ['z']"),
        ({"x": "high", "y": 1, "kind": "a"}, "is not a number"),
        ({"x": True, "y": 1, "kind": "a"}, "is not a number"),
        ({"x": float("nan"), "y": 1, "kind": "a"}, "is not a number"),
        ({"x": 0.5, "y": 1, "kind": "d"}, "not one of"),
        ([0.5, 1, "a"], "not an object"),
    ]:
        config, issues = validate_config(raw, SMALL)
        assert config is None and issues[0][0] == "invalid_config"
        assert needle in issues[0][1]


def test_parse_proposals():
    text = (
        "Low x did badly.\n```json\n"
        '{"configs": [{"x": 0.6, "y": 2, "kind": "b"}, {"x": 2, "y": 2, "kind": "b"},'
        ' {"x": 0.1, "y": 2, "kind": "q"}, {"x": 0.2, "y": 2, "kind": "a"}]}\n```'
    )
    reasoning, configs, issues, offered = parse_proposals(text, SMALL, k=3)
    assert reasoning == "Low x did badly." and offered == 4
    assert configs == [{"x": 0.6, "y": 2, "kind": "b"}, {"x": 1.0, "y": 2, "kind": "b"}]
    assert [k for k, _ in issues] == [
        "invalid_config",
        "out_of_range",
        "invalid_config",
    ]
    # a bare list, a reasoning field and a single configuration also parse
    _, configs, _, _ = parse_proposals('[{"x": 0.5, "y": 1, "kind": "a"}]', SMALL, 2)
    assert configs == [{"x": 0.5, "y": 1, "kind": "a"}]
    reasoning, configs, _, _ = parse_proposals(
        '{"reasoning": "why", "x": 0.5, "y": 1, "kind": "a"}', SMALL, 2
    )
    assert reasoning == "why" and len(configs) == 1
    for bad in ('{"configs": []}', '{"ideas": "none"}', "prose only"):
        with pytest.raises(ReplyError):
            parse_proposals(bad, SMALL, 2)


def test_parse_predictions_and_ranking():
    assert parse_predictions('```json\n{"predictions": [0.5, 1]}\n```', 2) == [0.5, 1.0]
    assert parse_predictions("[0.1, 0.2, 0.3]", 3) == [0.1, 0.2, 0.3]
    for bad, n in [("[0.1]", 2), ('{"predictions": [0.1, "x"]}', 2), ("none", 1)]:
        with pytest.raises(ReplyError):
            parse_predictions(bad, n)
    assert parse_ranking("1 looks better.\nranking: 1 > 2") == 1
    assert parse_ranking("**Ranking:** 2>1") == 2
    assert parse_ranking("ranking: 1 > 2 ... on reflection ranking: 2 > 1") == 2
    for bad in (
        "1 is better",
        "ranking: 1 > 1",
        "ranking: 3 > 1",
        "",
        "ranking: A > B",
    ):
        with pytest.raises(ReplyError):
            parse_ranking(bad)


def test_information_gain_by_hand():
    # targets 0.2, 0.8; without: 0.5, 0.5 -> MSE 0.09; with: 0.3, 0.7 -> MSE 0.01
    gain = information_gain([0.2, 0.8], [0.5, 0.5], [0.3, 0.7])
    assert gain["mse_without"] == pytest.approx(0.09)
    assert gain["mse_with"] == pytest.approx(0.01)
    assert gain["gain"] == pytest.approx(0.08)
    # reasoning that misleads is penalized
    assert information_gain([0.2], [0.2], [0.6])["gain"] == pytest.approx(-0.16)
    with pytest.raises(ValueError, match="one non-empty list each"):
        information_gain([0.1, 0.2], [0.1], [0.1, 0.2])
