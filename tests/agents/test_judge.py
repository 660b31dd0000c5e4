"""LLMJudge against a fake OpenAI-compatible server on 127.0.0.1: the rubric
prompt, score parsing, retries, the token header, failures counted and
recorded, and the judge as a reward inside CompositeReward."""

import pytest

from convergence_jax.agents.judge import (
    JudgeError,
    LLMJudge,
    parse_score,
    transcript,
)
from convergence_jax.agents.rewards import (
    CompositeReward,
    politeness_reward,
    score_trajectories,
)
from convergence_jax.agents.trajectory import MultiTurnTrajectory
from tests.agents.fake_openai_server import FakeOpenAIServer

TOKEN = "sk-judge-test-88e2"
RUBRIC = "The assistant solves the user's problem politely."


def conversation(answer, scenario_id="s"):
    return MultiTurnTrajectory.from_messages(
        [
            {"role": "system", "content": "secret system prompt"},
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": answer},
        ],
        scenario_id=scenario_id,
    )


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Score: 7/10", 7.0),
        ("7", 7.0),
        ("8.5", 8.5),
        ('{"score": 7}', 7.0),
        ('```json\n{"reasoning": "ok", "score": 6}\n```', 6.0),
        ("**8**", 8.0),
        ("The answer is polite.\n\nGrade: **9**", 9.0),
        ("Rating: 4 out of 10", 4.0),
        ("score = 6.5", 6.5),
        ("Two issues, 3 fixes. Score: 5", 5.0),
        ("First pass Score: 3, after review Score: 6", 6.0),
        ("I'd say 7/10.", 7.0),
        ("0", 0.0),
        ("Score: 10", 10.0),
    ],
)
def test_parse_score_forms(reply, score):
    assert parse_score(reply, (0, 10)) == score


@pytest.mark.parametrize(
    "reply, match",
    [
        ("Score: 11", "outside the range"),
        ("-1", "outside the range"),
        ('{"score": 12}', "outside the range"),
        ("Score: 4/5", "out of 5"),
        ("great answer", "no score"),
        ("between 3 and 4", "2 numbers"),
        ('{"score": "high"}', "not a number"),
        ('{"score": true}', "not a number"),
        ("", "no score"),
    ],
)
def test_parse_score_failures(reply, match):
    with pytest.raises(JudgeError, match=match):
        parse_score(reply, (0, 10))


def test_transcript_leaves_out_system_turns():
    text = transcript(conversation("It shipped."))
    assert text == "User: Where is my order?\nAssistant: It shipped."


@pytest.fixture
def server():
    def grade(body):
        prompt = body["messages"][-1]["content"]
        answer = prompt.split("Assistant: ")[-1]
        if "garbled" in answer:
            return "I cannot grade this."
        if "overflow" in answer:
            return "Score: 14"
        return "Polite and correct. Score: 9" if "please" in answer else "Score: 3/10"

    srv = FakeOpenAIServer(reply=grade, token=TOKEN)
    yield srv
    srv.close()


@pytest.fixture
def judge(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_TOKEN", TOKEN)
    judge = LLMJudge(
        server.base_url,
        "judge-model",
        RUBRIC,
        token_env="JUDGE_TEST_TOKEN",
        retries=2,
        backoff_s=0.01,
        timeout_s=5.0,
    )
    yield judge
    judge.close()


def test_judge_prompt_header_and_score(judge, server):
    result = judge.evaluate(conversation("It shipped, please wait."))
    assert result.score == 9.0 and result.normalized == 0.9 and result.error is None
    request = server.requests[-1]
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    assert RUBRIC in prompt and "User: Where is my order?" in prompt
    assert "from 0 to 10" in prompt and "secret system prompt" not in prompt
    assert judge(conversation("No.")) == 3.0
    assert judge.failures == 0 and judge.calls == 2


def test_judge_retries_on_500(judge, server):
    server.script = [500, 502]
    assert judge(conversation("please hold")) == 9.0
    assert len(server.requests) == 3 and judge.failures == 0


def test_parse_failures_are_counted_and_fall_back(judge, server):
    bad = judge.evaluate(conversation("garbled", scenario_id="g"))
    assert bad.score == 0.0 and bad.reply == "I cannot grade this."
    assert "no score" in bad.error
    over = judge.evaluate(conversation("overflow", scenario_id="o"))
    assert over.score == 0.0 and "outside the range" in over.error
    server.script = [500, 500, 500]
    down = judge.evaluate(conversation("please", scenario_id="d"))
    assert down.reply is None and "gave up after 3 attempts" in down.error
    assert judge.failures == 3 and judge.calls == 3
    assert [scenario for scenario, _ in judge.errors] == ["g", "o", "d"]


def test_token_is_required_and_masked(server, monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match="JUDGE_TEST_TOKEN"):
        LLMJudge(server.base_url, "m", RUBRIC, token_env="JUDGE_TEST_TOKEN")
    monkeypatch.setenv("JUDGE_TEST_TOKEN", "sk-wrong-judge-1")
    judge = LLMJudge(
        server.base_url, "m", RUBRIC, token_env="JUDGE_TEST_TOKEN", retries=0
    )
    result = judge.evaluate(conversation("please"))
    assert "401" in result.error and "sk-wrong-judge-1" not in result.error
    judge.close()


def test_judge_as_reward_composes(judge):
    reward = judge.as_reward()
    assert reward.name == "llm_judge"
    polite = conversation("Thank you, please hold on.")
    assert reward(polite) == pytest.approx(0.9)
    composite = CompositeReward([(reward, 1.0), (politeness_reward(), 1.0)])
    result = composite.evaluate(polite)
    assert result.components["llm_judge"] == pytest.approx(0.9)
    assert result.value == pytest.approx((0.9 + 1.0) / 2)
    # a failed grading raises inside the composite, which records it
    failed = composite.evaluate(conversation("garbled"))
    assert "llm_judge" in failed.errors and "no score" in failed.errors["llm_judge"]
    report = score_trajectories(reward, [polite, conversation("garbled")])
    assert report.num_failures == 1 and report.rewards[0] == pytest.approx(0.9)
    # on_failure="fallback": the judge's own fallback (raw score here)
    quiet = judge.as_reward(normalize=False, on_failure="fallback")
    assert quiet(conversation("garbled")) == 0.0
    assert quiet(polite) == 9.0
    assert judge.failures == 3  # composite, score_trajectories, quiet


def test_custom_template_range_and_fallback(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_TOKEN", TOKEN)
    judge = LLMJudge(
        server.base_url,
        "m",
        RUBRIC,
        token_env="JUDGE_TEST_TOKEN",
        score_range=(1, 10),
        template="{rubric} [{scenario_id}] {low}-{high}\nAssistant: {conversation}",
        fallback=5,
    )
    result = judge.evaluate(conversation("please", scenario_id="x1"))
    assert result.normalized == pytest.approx(8 / 9)
    assert "[x1] 1-10" in server.requests[-1]["body"]["messages"][0]["content"]
    assert judge(conversation("garbled")) == 5.0
    judge.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rubric": ""}, "rubric"),
        ({"score_range": (10, 0)}, "score_range"),
        ({"score_range": (0,)}, "score_range"),
        ({"template": "{rubric} {answer}"}, "unknown placeholders"),
        ({"template": "{rubric} only"}, "conversation"),
        ({"template": "{conversation"}, "does not parse"),
        ({"fallback": float("nan")}, "fallback"),
        ({"base_url": "ftp://x"}, "base_url"),
    ],
)
def test_bad_judge_arguments(kwargs, match):
    base = {
        "base_url": "http://127.0.0.1:1/v1",
        "model": "m",
        "rubric": RUBRIC,
        "token_env": None,
    }
    with pytest.raises(ValueError, match=match):
        LLMJudge(**{**base, **kwargs})
    with pytest.raises(ValueError, match="on_failure"):
        LLMJudge(**base).as_reward(on_failure="ignore")
