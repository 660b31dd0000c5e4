"""ConversationEnv: scripted users, simulators, a user model over HTTP, goals,
ends, max_turns, randomized users, rewards and failures recorded per episode."""

import math

import numpy as np
import pytest

from convergence_jax import lm
from convergence_jax.agents.agent import MultiTurnAgent, OpenAIBackend, StubBackend
from convergence_jax.agents.conversation import (
    ConversationEnv,
    EpisodeError,
    Scenario,
)
from convergence_jax.agents.randomizer import DomainRandomizer, UserProfile
from convergence_jax.agents.rewards import (
    CompositeReward,
    length_reward,
    politeness_reward,
    reward_function,
)
from convergence_jax.agents.tools import ToolAgent
from convergence_jax.agents.trajectory import tokenize_trajectory
from tests.agents.fake_openai_server import FakeOpenAIServer


def stub_agent(*responses):
    return MultiTurnAgent(StubBackend(list(responses) or ["Thank you, happy to help."]))


def roles(trajectory):
    return [t.role for t in trajectory.turns]


# ---------------------------------------------------------------- scenarios


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "no user side"),
        ({"user_turns": []}, "no user side"),
        ({"user_turns": "hello"}, "list of strings"),
        ({"user_turns": ["hi", ""]}, r"user_turns\[1\]"),
        ({"user_turns": ["hi"], "user_simulator": "nope"}, "callable"),
        ({"user_model": object()}, "complete"),
        ({"user_turns": ["hi"], "goal_phrase": " "}, "goal_phrase"),
        ({"user_turns": ["hi"], "context": 5}, "context"),
        ({"user_turns": ["hi"], "end_marker": ""}, "end_marker"),
    ],
)
def test_bad_scenarios_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scenario(id="s", **kwargs)
    with pytest.raises(ValueError, match="id"):
        Scenario(id="", user_turns=["hi"])


def test_bad_env_arguments():
    with pytest.raises(ValueError, match="max_turns"):
        ConversationEnv(max_turns=0)
    with pytest.raises(ValueError, match="reward_fn"):
        ConversationEnv(reward_fn=3)
    with pytest.raises(ValueError, match="sample"):
        ConversationEnv(randomizer=object())
    env = ConversationEnv()
    with pytest.raises(ValueError, match="Scenario"):
        env.run_episode(stub_agent(), {"id": "s"})
    with pytest.raises(ValueError, match="generate_response"):
        env.run_episode(object(), Scenario(id="s", user_turns=["hi"]))
    with pytest.raises(ValueError, match="at least one"):
        env.run_episodes(stub_agent(), [])


# ---------------------------------------------------------------- endings


def test_scripted_turns_run_out():
    env = ConversationEnv(max_turns=8)
    scenario = Scenario(id="s", topic="refund", user_turns=["Hi.", "Order A1."])
    trajectory = env.run_episode(stub_agent("Hello.", "Done."), scenario)
    assert roles(trajectory) == ["user", "assistant", "user", "assistant"]
    assert [t.content for t in trajectory.turns] == [
        "Hi.",
        "Hello.",
        "Order A1.",
        "Done.",
    ]
    assert trajectory.metadata["termination"] == "user_done"
    assert trajectory.metadata["agent_turns"] == 2
    assert trajectory.scenario_id == "s"
    assert trajectory.final_reward is None
    assert "system_prompt" not in trajectory.metadata
    agent = MultiTurnAgent(StubBackend(["ok"]), system_prompt="Be brief.")
    trajectory = env.run_episode(agent, scenario)
    assert trajectory.metadata["system_prompt"] == "Be brief."
    assert roles(trajectory)[0] == "user"


def test_goal_phrase_and_goal_fn_end_early():
    env = ConversationEnv()
    scenario = Scenario(id="s", user_turns=["a", "b", "c"], goal_phrase="REFUNDED")
    trajectory = env.run_episode(stub_agent("Checking.", "You are refunded."), scenario)
    assert trajectory.metadata["termination"] == "goal_reached"
    assert trajectory.metadata["agent_turns"] == 2

    def two_answers(t):
        return len(t.assistant_turns()) >= 2

    scenario = Scenario(id="s", user_turns=["a", "b", "c"], goal_fn=two_answers)
    trajectory = env.run_episode(stub_agent("x"), scenario)
    assert trajectory.metadata["termination"] == "goal_reached"
    assert len(trajectory.assistant_turns()) == 2
    # the env's default goal applies to scenarios without one
    env = ConversationEnv(goal_fn=two_answers)
    trajectory = env.run_episode(
        stub_agent("x"), Scenario(id="s", user_turns=["a"] * 4)
    )
    assert trajectory.metadata["termination"] == "goal_reached"


def test_end_marker_and_none_from_the_simulator():
    said = iter(["Where is A1?", "Thanks! [END]"])
    scenario = Scenario(id="s", user_simulator=lambda messages, scenario: next(said))
    trajectory = ConversationEnv().run_episode(stub_agent("Shipped."), scenario)
    assert roles(trajectory) == ["user", "assistant", "user"]
    assert trajectory.turns[-1].content == "Thanks!"
    assert trajectory.metadata["termination"] == "user_ended"

    def simulator(messages, scenario):
        return None if len(messages) >= 2 else "hi"

    scenario = Scenario(id="s", user_simulator=simulator)
    trajectory = ConversationEnv().run_episode(stub_agent("hello"), scenario)
    assert roles(trajectory) == ["user", "assistant"]
    assert trajectory.metadata["termination"] == "user_done"


def test_max_turns():
    scenario = Scenario(id="s", user_simulator=lambda m, s: "more?")
    env = ConversationEnv(max_turns=3)
    trajectory = env.run_episode(stub_agent("yes"), scenario)
    assert trajectory.metadata["termination"] == "max_turns"
    assert len(trajectory.assistant_turns()) == 3
    trajectory = env.run_episode(stub_agent("yes"), scenario, max_turns=1)
    assert len(trajectory.assistant_turns()) == 1


def test_scripted_opening_then_simulator():
    seen = []

    def simulator(messages, scenario):
        seen.append([m["role"] for m in messages])
        return "[END]"

    scenario = Scenario(id="s", user_turns=["Hi."], user_simulator=simulator)
    trajectory = ConversationEnv().run_episode(stub_agent("Hello."), scenario)
    assert roles(trajectory) == ["user", "assistant"]
    assert seen == [["user", "assistant"]]
    assert trajectory.metadata["termination"] == "user_ended"


# ------------------------------------------------------------ user model, tools


def test_user_model_over_http_sees_swapped_roles_and_the_profile():
    replies = iter(["I want a refund for A1.", "Great, thanks. [END]"])
    server = FakeOpenAIServer(reply=lambda body: next(replies))
    try:
        user = OpenAIBackend(server.base_url, "user-sim", token_env=None)
        scenario = Scenario(
            id="s",
            topic="refunds",
            context={"order_id": "A1"},
            user_model=user,
        )
        profile = UserProfile(
            "Hi, Sam here.", "Refund me, please.", "Order {order_id}."
        )
        trajectory = ConversationEnv().run_episode(
            stub_agent("Refund issued."), scenario, profile=profile
        )
        user.close()
    finally:
        server.close()
    assert roles(trajectory) == ["user", "assistant", "user"]
    assert trajectory.turns[0].content == "I want a refund for A1."
    assert trajectory.metadata["termination"] == "user_ended"
    assert trajectory.metadata["user_profile"]["persona"] == "Hi, Sam here."
    first, second = (r["body"]["messages"] for r in server.requests)
    assert first[0]["role"] == "system" and len(first) == 1
    system = first[0]["content"]
    assert "Topic: refunds" in system and "order_id: A1" in system
    assert "Hi, Sam here." in system and "Order A1." in system and "[END]" in system
    assert [m["role"] for m in second] == ["system", "assistant", "user"]
    assert second[2]["content"] == "Refund issued."


def test_tool_agent_turns_are_recorded():
    schema = {
        "name": "lookup",
        "parameters": {
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    }
    backend = StubBackend(
        ['{"tool": "lookup", "arguments": {"order_id": "A1"}}', "It shipped."]
    )
    agent = ToolAgent(backend, [(schema, lambda order_id: {"status": "shipped"})])
    trajectory = ConversationEnv().run_episode(
        agent, Scenario(id="s", user_turns=["Where is A1?"])
    )
    assert roles(trajectory) == ["user", "assistant", "tool", "assistant"]
    assert trajectory.turns[2].tool_call_id == "call_0"
    tokens, _, loss = tokenize_trajectory(trajectory, lm.ByteTokenizer())
    assert loss.sum() > 0 and len(tokens) == len(loss)


def test_agent_with_only_generate_response():
    class Echo:
        def generate_response(self, messages, context=None):
            assert context["conversation_id"] == "s"
            assert context["scenario"] == {"order_id": "A1"}
            return "echo " + messages[-1]["content"]

    scenario = Scenario(id="s", user_turns=["hi"], context={"order_id": "A1"})
    trajectory = ConversationEnv().run_episode(Echo(), scenario)
    assert trajectory.turns[-1].content == "echo hi"


# ---------------------------------------------------------------- randomizer


def test_randomized_users_fill_scripted_turns():
    randomizer = DomainRandomizer.customer_service(strength=1.0)
    scenario = Scenario(
        id="s",
        context={"order_id": "A7"},
        user_turns=["{persona} {topic}", "{style}"],
    )

    def episode_users(seed):
        env = ConversationEnv(randomizer=randomizer, seed=seed)
        return [
            env.run_episode(stub_agent("ok"), scenario).metadata["user_profile"]
            for _ in range(4)
        ]

    users = episode_users(0)
    assert users == episode_users(0)  # same seed, same users
    assert users != episode_users(1)
    env = ConversationEnv(randomizer=randomizer, seed=0)
    trajectory = env.run_episode(stub_agent("ok"), scenario)
    profile = trajectory.metadata["user_profile"]
    assert trajectory.turns[0].content == f"{profile['persona']} {profile['topic']}"
    assert trajectory.turns[2].content == profile["style"].format(order_id="A7")
    assert "A7" in trajectory.turns[2].content
    assert profile["indices"][0] != 0  # strength 1 never draws the default


def test_simulator_sees_the_profile():
    got = []

    def simulator(messages, scenario):
        got.append(scenario.user_profile)
        return "[END]"

    env = ConversationEnv(randomizer=DomainRandomizer.customer_service(), seed=3)
    scenario = Scenario(id="s", user_turns=["hi"], user_simulator=simulator)
    env.run_episode(stub_agent(), scenario)
    assert isinstance(got[0], UserProfile)


# ------------------------------------------------------- rewards and failures


def test_reward_and_turn_rewards():
    reward = CompositeReward(
        [(politeness_reward(), 1.0), (length_reward(max_length=100), 1.0)]
    )
    env = ConversationEnv(reward_fn=reward, turn_reward_fn=length_reward(max_length=7))
    scenario = Scenario(id="s", user_turns=["a", "b"])
    trajectory = env.run_episode(
        stub_agent("Thanks!", "Thank you, happy to help."), scenario
    )
    assert trajectory.final_reward == pytest.approx(reward(trajectory))
    assert [t.reward for t in trajectory.assistant_turns()] == [1.0, 0.0]
    assert all(t.reward is None for t in trajectory.turns if t.role == "user")


def test_reward_failures_are_recorded_per_episode():
    @reward_function
    def fragile(trajectory):
        text = trajectory.assistant_turns()[-1].content
        if text == "boom":
            raise RuntimeError("judge down")
        return math.nan if text == "nan" else 1.0

    env = ConversationEnv(reward_fn=fragile, fallback=-1.0)
    scenarios = [Scenario(id=f"s{i}", user_turns=["hi"]) for i in range(3)]
    agent = stub_agent("fine", "boom", "nan")
    report = env.run_episodes(agent, scenarios)
    assert report.rewards.tolist() == [1.0, -1.0, -1.0]
    assert report.num_failures == 2
    assert report.errors[0] is None
    assert "judge down" in report.errors[1] and "returned nan" in report.errors[2]
    assert report.trajectories[1].metadata["reward_error"] == report.errors[1]
    assert report.trajectories[1].final_reward == -1.0
    assert [t.scenario_id for t in report.trajectories] == ["s0", "s1", "s2"]


def test_agent_and_user_failures_keep_what_was_said():
    class Flaky:
        calls = 0

        def generate_response(self, messages, context=None):
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("backend down")
            return "ok"

    def broken_user(messages, scenario):
        raise RuntimeError("simulator crashed")

    env = ConversationEnv(reward_fn=length_reward(max_length=10))
    scenarios = [
        Scenario(id="flaky", user_turns=["a", "b", "c"]),
        Scenario(id="dead", user_simulator=broken_user),
        Scenario(id="fine", user_turns=["a"]),
    ]
    report = env.run_episodes(Flaky(), scenarios)
    flaky, dead, fine = report.trajectories
    assert roles(flaky) == ["user", "assistant", "user"]
    assert flaky.metadata["termination"] == "error"
    assert "ConnectionError: backend down" in flaky.metadata["error"]
    assert flaky.final_reward == 1.0  # the partial conversation is still scored
    assert dead is None and "simulator crashed" in report.errors[1]
    assert fine is not None and report.errors[2] is None
    assert report.num_failures == 2
    assert report.rewards.tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(EpisodeError, match="simulator crashed"):
        env.run_episode(Flaky(), scenarios[1])


def test_no_reward_gives_nan_in_the_report():
    report = ConversationEnv().run_episodes(
        stub_agent(), [Scenario(id="s", user_turns=["a"])]
    )
    assert np.isnan(report.rewards[0]) and report.num_failures == 0
