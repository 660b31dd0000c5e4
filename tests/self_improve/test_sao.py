import collections
import re

import jax
import numpy as np
import pytest

from convergence_jax import lm
from convergence_jax.lm.model import init_params
from convergence_jax.self_improve import sao
from convergence_jax.self_improve.pairs import PairFilter, load_pairs
from convergence_jax.self_improve.personas import persona_bank
from tests.agents.fake_openai_server import FakeOpenAIServer

# --- the ranking parser ------------------------------------------------------


@pytest.mark.parametrize(
    "text, prompted, expected",
    [
        ("ranking: 1 > 2", False, (1, 2)),
        ("ranking: 2 > 1", False, (2, 1)),
        ("  Ranking :2>1 because it is right", False, (2, 1)),
        ("RANKING:\t1 >\n2", False, (1, 2)),
        ("I think so. ranking: 2 > 1. ranking: 1 > 2", False, (2, 1)),
        (" 1 > 2", True, (1, 2)),  # continuation of a prompt ending in 'ranking:'
        ("2>1<eos>", True, (2, 1)),
        (" ranking: 2 > 1", True, (2, 1)),
        ("ranking: 1 > 1", False, None),  # repeated digit
        ("ranking: 2 > 2", False, None),
        ("ranking: 1 > 3", False, None),
        ("ranking: 12 > 1", False, None),
        ("1 > 2", False, None),  # no 'ranking:' and not prompted
        ("the first is better", False, None),
        ("ranking: one > two", False, None),
        ("", True, None),
        (" >> 1", True, None),
    ],
)
def test_parse_ranking(text, prompted, expected):
    assert sao.parse_ranking(text, prompted=prompted) == expected


def test_extract_prompt():
    assert sao.extract_prompt('User prompt: "Plan a trip"') == "Plan a trip"
    assert sao.extract_prompt("Sure!\nuser prompt: 3+4=") == "3+4="
    assert sao.extract_prompt(" 12+7=") == "12+7="
    assert sao.extract_prompt("User prompt:   ") is None


def test_persona_bank():
    bank = persona_bank()
    assert len(bank) >= 100 and len({p.text for p in bank}) == len(bank)
    assert bank == persona_bank()  # deterministic
    assert sorted(p.text for p in persona_bank(shuffle_seed=1)) == sorted(
        p.text for p in bank
    )
    with pytest.raises(ValueError, match="roles is empty"):
        persona_bank(roles=())


# --- a scripted model: the pipeline's logic, exactly ------------------------------

# Persona i asks "what is i+i?"; its two answers, the right one being 2i. Persona
# 1 answers the same twice, 3's judge does not answer in the format, 4's judge
# always says 1 > 2 (position bias), 5 writes an empty prompt.
ANSWERS = {0: ("0", "1"), 1: ("2", "2"), 2: ("5", "4"), 3: ("6", "7"), 4: ("9", "8")}
PERSONAS = [f"p{i}" for i in range(6)]


class ScriptedModel:
    """A simulated SAO model (prompt writer, answerer and judge), scripted on the
    text of each request; answers in call order."""

    def __init__(self):
        self.calls = collections.Counter()
        self.temperatures = []

    def reply(self, text: str) -> str:
        if "persona may ask" in text:
            i = int(re.search(r"do: p(\d)\.", text).group(1))
            return "User prompt:" if i == 5 else f"User prompt: what is {i}+{i}?"
        if text.startswith("You are an impartial judge"):
            i = int(re.search(r"Prompt: what is (\d)", text).group(1))
            first = re.search(r"<Response 1> (.*) </Response 1>", text).group(1)
            if i == 3:
                return "Both answers are fine."
            if i == 4:
                return "ranking: 1 > 2"
            return "Ranking : 1>2" if first == str(2 * i) else "ranking: 2 > 1"
        i = int(text[8])
        n = self.calls[text]
        self.calls[text] += 1
        return ANSWERS[i][n]

    def generate(self, prompts, temperature, key):
        self.temperatures.append(temperature)
        return [self.reply(p) for p in prompts]


def truth(prompt, response):
    match = re.match(r"what is (\d)\+(\d)\?", prompt)
    return None if match is None else response == str(2 * int(match.group(1)))


def test_round_with_a_scripted_model():
    model = ScriptedModel()
    kept, report = sao.sao_round(
        jax.random.key(0), model, PERSONAS, sao.SAOConfig(), truth=truth
    )
    assert [(p.prompt, p.chosen, p.rejected) for p in kept] == [
        ("what is 0+0?", "0", "1"),
        ("what is 2+2?", "4", "5"),
    ]
    assert kept[0].meta["persona"] == "p0" and kept[0].meta["round"] == 0
    expected = {
        "personas": 6,
        "prompts_empty": 1,
        "prompts_rejected": 0,
        "prompts_written": 5,
        "pairs_sampled": 5,
        "identical": 1,
        "judge_calls": 8,  # 4 different pairs, both orders
        "parse_failures": 2,  # persona 3, both orders
        "unparsed_pairs": 1,
        "position_inconsistent": 1,  # persona 4
        "pairs_ranked": 2,
        "kept": 2,
        "decisive_pairs": 2,
        "judge_agreement": 1.0,
        "chosen_accuracy": 1.0,
    }
    assert {k: report[k] for k in expected} == expected
    assert report["filter"]["identical"] == 1 and report["filter"]["kept"] == 2
    assert sum(report["filter"].values()) == report["pairs_ranked"] + 1
    assert report["response_accuracy"] == pytest.approx(6 / 10)
    # Prompts at 1.0, responses at tau = 0.6, the judge greedy.
    assert model.temperatures == [1.0, 0.6, 0.0, 0.0]


def test_one_order_keeps_the_biased_ranking_and_prompt_ok_drops():
    config = sao.SAOConfig(judge_both_orders=False, temperature=0.9)
    kept, report = sao.sao_round(
        jax.random.key(0),
        ScriptedModel(),
        PERSONAS,
        config,
        truth=truth,
        prompt_ok=lambda p: "2+2" not in p,
    )
    assert report["prompts_rejected"] == 1 and report["prompts_written"] == 4
    assert report["judge_calls"] == 3 and report["parse_failures"] == 1
    assert report["position_inconsistent"] == 0
    assert [(p.chosen, p.rejected) for p in kept] == [("0", "1"), ("9", "8")]
    assert report["judge_agreement"] == pytest.approx(1 / 2)


def test_bad_input():
    with pytest.raises(ValueError, match="persona bank is empty"):
        sao.sao_round(jax.random.key(0), ScriptedModel(), [])
    with pytest.raises(ValueError, match="persona bank is empty"):
        sao.run_sao(jax.random.key(0), ScriptedModel(), [])
    for tau in (0.0, -0.5):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            sao.SAOConfig(temperature=tau)
    with pytest.raises(ValueError, match="prompt_temperature must be > 0"):
        sao.SAOConfig(prompt_temperature=0)
    config = lm.LMConfig(
        vocab_size=261,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=4,
    )
    with pytest.raises(ValueError, match="unknown preference loss 'nope'"):
        sao.PreferenceTrainer(
            config,
            lm.ByteTokenizer(),
            prompt_length=4,
            completion_length=4,
            loss="nope",
        )
    with pytest.raises(ValueError, match="rounds must be"):
        sao.run_sao(jax.random.key(0), ScriptedModel(), PERSONAS, rounds=0)
    with pytest.raises(ValueError, match="needs a generator with parameters"):
        sao.run_sao(jax.random.key(0), ScriptedModel(), PERSONAS, trainer=object())


# --- the whole pipeline on a tiny untrained JAX model --------------------------------


@pytest.fixture(scope="module")
def tiny():
    tokenizer = lm.ByteTokenizer()
    config = lm.LMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
    )
    params = init_params(jax.random.key(0), config)
    model = sao.JaxGenerator(
        config, tokenizer, params, max_new_tokens=6, prompt_length=48, batch_size=8
    )
    trainer = sao.PreferenceTrainer(
        config,
        tokenizer,
        prompt_length=8,
        completion_length=7,
        batch_size=2,
        num_steps=3,
        capacity=4,
        epochs=1.0,
    )
    return config, tokenizer, model, trainer


class AlwaysFirst:
    """A simulated judge that always ranks the first response first."""

    def generate(self, prompts, temperature, key):
        return ["ranking: 1 > 2"] * len(prompts)


def test_untrained_model_end_to_end(tiny, tmp_path):
    _, _, model, trainer = tiny
    personas = persona_bank()[:4]
    config = sao.SAOConfig(
        templates=sao.COMPACT_TEMPLATES, filter=PairFilter(unit="char")
    )
    before = model.params
    # Self-judged: the untrained model's rankings rarely parse; all counted.
    reports = sao.run_sao(
        jax.random.key(1),
        model,
        personas,
        config,
        rounds=1,
        trainer=trainer,
        out_dir=tmp_path / "self",
        progress=None,
    )
    (r,) = reports
    assert r["prompts_written"] + r["prompts_empty"] + r["prompts_rejected"] == 4
    assert r["identical"] + r["judge_calls"] // 2 == r["pairs_sampled"]
    assert r["parse_failures"] <= r["judge_calls"]
    ranked = r["pairs_ranked"] + r["unparsed_pairs"] + r["position_inconsistent"]
    assert ranked + r["identical"] == r["pairs_sampled"]
    assert sum(r["filter"].values()) == r["pairs_ranked"] + r["identical"]
    assert r["filter"]["kept"] == r["kept"]
    # A simulated judge that always answers: pairs are kept, saved, trained on.
    lines = []
    model.params = before
    reports = sao.run_sao(
        jax.random.key(2),
        model,
        persona_bank()[4:8],
        sao.SAOConfig(
            templates=sao.COMPACT_TEMPLATES,
            judge_both_orders=False,
            filter=PairFilter(unit="char"),
        ),
        rounds=1,
        trainer=trainer,
        judge=AlwaysFirst(),
        out_dir=tmp_path / "fixed",
        progress=lines.append,
    )
    (r,) = reports
    assert r["parse_failures"] == 0 and r["pairs_ranked"] == r["judge_calls"]
    assert r["kept"] >= 1 and lines[0].startswith("SAO round 1:")
    jsonl, as_json = map(load_pairs, r["files"])
    assert jsonl == as_json and len(jsonl) == r["kept"]
    assert all(p.meta["round"] == 1 for p in jsonl)
    if r["train"]["pairs"]:
        changed = jax.tree.leaves(
            jax.tree.map(lambda a, b: bool(np.any(a != b)), before, model.params)
        )
        assert any(changed)
    assert r["train"]["pairs"] + r["train"]["dropped_overlong"] == r["kept"]


def test_pairs_to_batch(tiny):
    _, tokenizer, _, _ = tiny
    pairs = [
        sao.PreferencePair("1+2=", "3", "4"),
        sao.PreferencePair("10+5=", "15", "5"),
    ]
    batch = sao.pairs_to_batch(pairs, tokenizer, prompt_length=6, completion_length=4)
    eos = tokenizer.eos_id
    assert np.asarray(batch.prompt_tokens)[1].tolist() == [tokenizer.pad_id] + list(
        b"10+5="
    )
    assert np.asarray(batch.prompt_mask)[0].tolist() == [0, 0, 1, 1, 1, 1]
    assert np.asarray(batch.chosen)[1].tolist() == [ord("1"), ord("5"), eos, 0][:3] + [
        tokenizer.pad_id
    ]
    assert np.asarray(batch.rejected_mask).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    tiled = sao.tile_batch(batch, 5)
    assert (
        np.asarray(tiled.chosen)[[0, 2, 4]].tolist()
        == [np.asarray(batch.chosen)[0].tolist()] * 3
    )
    with pytest.raises(ValueError, match="pair 1's chosen has 3 tokens"):
        sao.pairs_to_batch(pairs, tokenizer, prompt_length=6, completion_length=2)
    with pytest.raises(ValueError, match="no pairs"):
        sao.pairs_to_batch([], tokenizer, 6, 4)


# --- an OpenAI-compatible endpoint ------------------------------------------------


def test_openai_generator_runs_a_round(monkeypatch):
    script = ScriptedModel()
    server = FakeOpenAIServer(
        reply=lambda body: script.reply(body["messages"][-1]["content"]), token="t0k"
    )
    monkeypatch.setenv("SAO_TEST_TOKEN", "t0k")
    model = sao.OpenAIGenerator(
        server.base_url,
        "self",
        token_env="SAO_TEST_TOKEN",
        max_concurrency=1,
        backoff_s=0.01,
        max_tokens=64,
    )
    try:
        server.script = [503]  # the first request fails once and is retried
        kept, report = sao.sao_round(jax.random.key(0), model, PERSONAS, truth=truth)
        assert [(p.chosen, p.rejected) for p in kept] == [("0", "1"), ("4", "5")]
        assert report["parse_failures"] == 2 and report["position_inconsistent"] == 1
        bodies = [r["body"] for r in server.requests]
        assert len(bodies) == 1 + 6 + 10 + 8  # the retry, prompts, answers, judge
        assert bodies[1]["temperature"] == 1.0 and bodies[8]["temperature"] == 0.6
        assert bodies[-1]["temperature"] == 0.0 and bodies[-1]["model"] == "self"
        assert all(isinstance(b["seed"], int) and b["max_tokens"] == 64 for b in bodies)
        assert server.requests[0]["headers"]["Authorization"] == "Bearer t0k"
        assert model.notes and not model.errors
        # A request refused for good gives "" and its error, not a lost round.
        server.script = [400]
        out = model.generate(["hello"], 0.6, jax.random.key(1))
        assert out == [""] and "HTTP 400" in model.errors[0]
        assert "t0k" not in model.errors[0]
    finally:
        model.close()
        server.close()


def test_experiment_script_writes_pairs_and_report(tmp_path):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "sao.py"
    spec = importlib.util.spec_from_file_location("experiments_sao", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    def reply(body):
        text = body["messages"][-1]["content"]
        if "persona may ask" in text:
            persona = text.split("do: ")[1].split(". Note")[0]
            return f"User prompt: plan a day for {persona}"
        if text.startswith("You are an impartial judge"):
            return "ranking: 1 > 2" if "<Response 1> a" in text else "ranking: 2 > 1"
        return f"{'a' if body['seed'] % 2 else 'b'} reply number {body['seed']}"

    server = FakeOpenAIServer(reply=reply)
    try:
        config = module.Config(
            base_url=server.base_url,
            model="m",
            token_env=None,
            personas=5,
            out_dir=str(tmp_path / "run"),
        )
        (report,) = module.main(config)
    finally:
        server.close()
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["rounds"][0]["personas"] == 5 and report["http_errors"] == []
    pairs = load_pairs(tmp_path / "run" / "round_1" / "round_1.jsonl")
    assert len(pairs) == report["kept"] >= 1
    assert all(p.chosen.startswith("a") for p in pairs)  # the judge's preference


def test_trainer_epochs_scale_updates_with_pairs(tiny):
    config, tokenizer, model, trainer = tiny
    pairs = [sao.PreferencePair(f"{i}+1=", str(i + 1), str(i)) for i in range(5)]
    _, one = trainer.train(jax.random.key(0), model.params, pairs[:1])
    _, capped = trainer.train(jax.random.key(0), model.params, pairs)
    assert (one["steps"], capped["steps"]) == (1, 3)  # ceil(5 / 2) = 3 = the cap
    assert np.isfinite(capped["loss"]) and capped["pairs"] == 5
    with pytest.raises(ValueError, match="epochs must be > 0"):
        sao.PreferenceTrainer(
            config, tokenizer, prompt_length=8, completion_length=7, epochs=0
        )
