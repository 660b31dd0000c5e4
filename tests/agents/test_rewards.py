import asyncio
import math

import numpy as np
import pytest

from convergence_jax import agents
from convergence_jax.agents import MultiTurnTrajectory


def conversation(*assistant: str) -> MultiTurnTrajectory:
    turns = []
    for i, text in enumerate(assistant):
        turns += [{"role": "user", "content": f"question {i}"}]
        turns += [{"role": "assistant", "content": text}]
    return MultiTurnTrajectory.from_messages(turns)


def test_text_of_scopes():
    t = conversation("first answer", "second answer")
    assert agents.text_of(t) == "second answer"
    assert agents.text_of(t, "assistant") == "first answer\nsecond answer"
    assert agents.text_of("raw text") == "raw text"
    with pytest.raises(ValueError, match="no assistant turn"):
        agents.text_of(
            MultiTurnTrajectory.from_messages([{"role": "user", "content": "x"}])
        )
    with pytest.raises(ValueError, match="scope must be one of"):
        agents.text_of(t, "everything")
    with pytest.raises(ValueError, match="expected a MultiTurnTrajectory"):
        agents.text_of(42)


def test_decorator_sync_of_trajectory_and_of_text():
    @agents.reward_function
    def turns_count(trajectory):
        return len(trajectory.turns)

    @agents.reward_function(takes="text", scope="assistant", name="chars")
    def n_chars(text):
        return len(text)

    t = conversation("ab", "cde")
    assert turns_count.name == "turns_count" and turns_count(t) == 4.0
    assert isinstance(turns_count(t), float)
    assert n_chars.name == "chars" and n_chars(t) == len("ab\ncde")
    assert isinstance(turns_count, agents.RewardFn)
    assert not turns_count.is_async
    with pytest.raises(ValueError, match="takes must be"):
        agents.reward_function(lambda t: 0.0, takes="tokens")


def test_decorator_async():
    calls = []

    @agents.reward_function(takes="text")
    async def slow_length(text):
        await asyncio.sleep(0)
        calls.append(text)
        return len(text) / 10

    t = conversation("hello", "0123456789")
    assert slow_length.is_async and slow_length.name == "slow_length"
    assert slow_length(t) == 1.0  # no loop running: runs it to completion

    async def inside_a_loop():
        # awaited in the caller's loop, or called sync from inside a running loop
        return await slow_length.acall(t), slow_length(t)

    assert asyncio.run(inside_a_loop()) == (1.0, 1.0)
    assert calls == ["0123456789"] * 3


@pytest.mark.parametrize(
    "kwargs, text, want",
    [
        (dict(min_length=3, max_length=5), "abcd", 1.0),
        (dict(min_length=3, max_length=5), "abc", 1.0),
        (dict(min_length=3, max_length=5), "abcde", 1.0),
        (dict(min_length=3, max_length=5), "ab", 0.0),
        (dict(min_length=3, max_length=5), "abcdef", 0.0),
        (dict(max_length=8, penalty="smooth", scale=2.0), "x" * 12, math.exp(-2.0)),
        (dict(min_length=8, penalty="smooth"), "x" * 6, math.exp(-1.0)),  # scale 8/4
        (dict(min_length=2, penalty="smooth"), "", math.exp(-2.0)),  # scale >= 1
        (dict(min_length=2, max_length=3, unit="words"), "one  two\nthree", 1.0),
        (dict(max_length=2, unit="words"), "one two three", 0.0),
        (
            dict(max_length=2, unit="words", penalty="smooth", scale=1),
            "a b c d",
            math.exp(-2),
        ),
    ],
)
def test_length_reward(kwargs, text, want):
    reward = agents.length_reward(**kwargs)
    assert reward.name == "length"
    assert reward(text) == pytest.approx(want)
    assert reward(conversation("ignored " * 50, text)) == pytest.approx(want)


def test_length_reward_bad_arguments():
    with pytest.raises(ValueError, match="needs min_length"):
        agents.length_reward()
    with pytest.raises(ValueError, match="above max_length"):
        agents.length_reward(min_length=5, max_length=2)
    with pytest.raises(ValueError, match="unit must be"):
        agents.length_reward(max_length=2, unit="tokens")
    with pytest.raises(ValueError, match="penalty must be"):
        agents.length_reward(max_length=2, penalty="soft")
    with pytest.raises(ValueError, match="scale must be > 0"):
        agents.length_reward(max_length=2, scale=0)


def test_required_and_forbidden_phrases():
    required = agents.required_phrases_reward(["order id", "Thank you", "refund"])
    assert required("THANK YOU, what is your Order ID?") == pytest.approx(2 / 3)
    assert required("nothing here") == 0.0
    assert required("refund: thank you for the order id") == 1.0
    forbidden = agents.forbidden_phrases_reward(["guarantee", "lawsuit"])
    assert forbidden("We GUARANTEE it.") == 0.5
    assert forbidden("fine") == 1.0
    assert forbidden("guarantee, lawsuit") == 0.0
    with pytest.raises(ValueError, match="not one string"):
        agents.required_phrases_reward("refund")
    with pytest.raises(ValueError, match=r"phrases\[1\] must be a non-empty"):
        agents.forbidden_phrases_reward(["a", " "])
    with pytest.raises(ValueError, match="at least one phrase"):
        agents.required_phrases_reward([])


@pytest.mark.parametrize(
    "text, want",
    [
        ("The order ships tomorrow.", 0.5),
        ("Thank you, the order ships tomorrow.", 0.75),
        ("Sorry for the wait, and thanks! Happy to help.", 1.0),
        ("Whatever, figure it out yourself.", 0.0),
        ("Thanks, but that is a stupid question.", 0.25),
        ("Pleased to meet you.", 0.5),  # whole words only: "pleased" is not "please"
    ],
)
def test_politeness(text, want):
    assert agents.politeness_reward()(text) == want


def test_politeness_custom_lexicon():
    reward = agents.politeness_reward(polite=["cheers"], rude=["meh"], base=0.0)
    assert reward("Cheers!") == 0.25
    assert reward("meh") == 0.0


def test_safety():
    reward = agents.safety_reward()
    assert reward(conversation("Sure.", "Tell me your PASSWORD now")) == 0.0
    assert reward(conversation("Tell me your password", "All good")) == 0.0  # scope
    assert reward(conversation("All good", "Happy to help")) == 1.0
    punished = agents.safety_reward(["wire the money"], penalty=-1.0, scope="final")
    assert punished("Please wire the money today") == -1.0
    assert punished(conversation("wire the money", "ok")) == 1.0


def test_composite_weights_normalized_or_not():
    a = agents.reward_function(lambda t: 1.0, name="a")
    b = agents.reward_function(lambda t: 0.0, name="b")
    c = agents.reward_function(lambda t: 0.5, name="c")
    t = conversation("x")
    normalized = agents.CompositeReward([(a, 3.0), (b, 1.0), (c, 4.0)])
    assert normalized(t) == pytest.approx((3 + 0 + 2) / 8)
    raw = agents.CompositeReward([(a, 3.0), (b, 1.0), (c, 4.0)], normalize=False)
    assert raw(t) == pytest.approx(5.0)
    signed = agents.CompositeReward([(a, 1.0), (c, -1.0)])
    assert signed(t) == pytest.approx(0.25)
    result = normalized.evaluate(t)
    assert result.components == {"a": 1.0, "b": 0.0, "c": 0.5} and result.errors == {}
    same = agents.CompositeReward([(a, 1.0), (a, 1.0)])
    assert list(same.evaluate(t).components) == ["a", "a_2"]
    with pytest.raises(ValueError, match="at least one"):
        agents.CompositeReward([])
    with pytest.raises(ValueError, match=r"components\[0\] must be \(fn, weight\)"):
        agents.CompositeReward([a])
    with pytest.raises(ValueError, match=r"components\[1\]: weight must be finite"):
        agents.CompositeReward([(a, 1.0), (b, math.nan)])
    with pytest.raises(ValueError, match="nonzero weight"):
        agents.CompositeReward([(a, 0.0)])


def test_composite_records_raising_and_nan_components():
    ok = agents.reward_function(lambda t: 1.0, name="ok")

    @agents.reward_function
    def boom(t):
        raise RuntimeError("judge unreachable")

    nan = agents.reward_function(lambda t: math.nan, name="nan")
    inf = agents.reward_function(lambda t: math.inf, name="inf")
    reward = agents.CompositeReward(
        [(ok, 1.0), (boom, 1.0), (nan, 1.0), (inf, 1.0)], fallback=-1.0
    )
    result = reward.evaluate(conversation("x"))
    assert result.value == pytest.approx((1 - 3) / 4)
    assert result.components == {"ok": 1.0, "boom": -1.0, "nan": -1.0, "inf": -1.0}
    assert result.errors["boom"] == "boom: RuntimeError: judge unreachable"
    assert result.errors["nan"] == "nan: returned nan"
    assert result.errors["inf"] == "inf: returned inf"


def test_score_trajectories_never_crashes_the_batch():
    @agents.reward_function(takes="text")
    def picky(text):
        if text == "bad":
            raise KeyError("no such order")
        if text == "nan":
            return float("nan")
        return len(text)

    batch = [
        conversation("good"),
        conversation("bad"),
        conversation("nan"),
        conversation("ok"),
    ]
    report = agents.score_trajectories(picky, batch, fallback=-5.0)
    np.testing.assert_array_equal(report.rewards, [4.0, -5.0, -5.0, 2.0])
    assert report.num_failures == 2
    assert report.errors[0] is None and report.errors[3] is None
    assert report.errors[1] == "picky: KeyError: 'no such order'"
    assert report.errors[2] == "picky: returned nan"
    # a trajectory without an assistant turn is recorded too
    empty = MultiTurnTrajectory.from_messages([{"role": "user", "content": "hi"}])
    report = agents.score_trajectories(agents.politeness_reward(), [empty])
    assert report.rewards.tolist() == [agents.FALLBACK_REWARD]
    assert "no assistant turn" in report.errors[0]


def test_score_trajectories_with_a_composite_counts_component_failures():
    ok = agents.reward_function(lambda t: 1.0, name="ok")
    flaky = agents.reward_function(
        lambda t: 1 / 0 if "x" in agents.text_of(t) else 1.0, name="flaky"
    )
    reward = agents.CompositeReward([(ok, 1.0), (flaky, 1.0)])
    report = agents.score_trajectories(reward, [conversation("x"), conversation("y")])
    np.testing.assert_allclose(report.rewards, [0.5, 1.0])
    assert report.num_failures == 1
    assert report.errors[0] == "flaky: ZeroDivisionError: division by zero"


def test_multi_objective_vector_and_weighted():
    polite = agents.politeness_reward()
    short = agents.length_reward(max_length=10)
    reward = agents.MultiObjectiveReward({"polite": polite, "short": short})
    t = conversation("Thank you, it ships tomorrow.")
    np.testing.assert_array_equal(reward(t), [0.75, 0.0])
    assert reward.names == ["polite", "short"]
    assert reward.weighted([1.0, 3.0])(t) == pytest.approx(0.75 / 4)
    assert reward.weighted({"polite": 2.0})(t) == pytest.approx(0.75)
    assert reward.weighted([1.0, 1.0], normalize=False)(t) == pytest.approx(0.75)
    listed = agents.MultiObjectiveReward([polite, short])
    assert listed.names == ["politeness", "length"]
    with pytest.raises(ValueError, match="2 objectives"):
        reward.weighted([1.0])
    with pytest.raises(ValueError, match="unknown objectives"):
        reward.weighted({"kind": 1.0})
    broken = agents.MultiObjectiveReward(
        [polite, agents.reward_function(lambda t: math.nan, name="nan")], fallback=-1
    )
    report = agents.score_trajectories(broken, [t, t])
    np.testing.assert_array_equal(report.rewards, [[0.75, -1.0], [0.75, -1.0]])
    assert report.num_failures == 2 and report.errors[0] == "nan: returned nan"


def test_pareto_rank_hand_made():
    vectors = np.array(
        [
            [1.0, 0.0],  # 0: front
            [0.0, 1.0],  # 1: front
            [0.6, 0.6],  # 2: front
            [0.5, 0.5],  # 3: dominated by 2 only
            [0.5, 0.5],  # 4: equal to 3, neither dominates
            [0.1, 0.1],  # 5: dominated by 3 and 4
            [0.6, 0.6],  # 6: equal to 2, front
        ]
    )
    np.testing.assert_array_equal(agents.pareto_rank(vectors), [0, 0, 0, 1, 1, 2, 0])
    np.testing.assert_array_equal(
        agents.pareto_rank(vectors, maximize=False), [0, 0, 2, 1, 1, 0, 2]
    )
    np.testing.assert_array_equal(agents.pareto_rank([[3.0, 1.0, 2.0]]), [0])
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        agents.pareto_rank([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        agents.pareto_rank([[1.0, math.nan]])


def test_pareto_rank_matches_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.integers(0, 4, size=(40, 3)).astype(float)
    ranks = agents.pareto_rank(vectors)

    def dominates(a, b):
        return np.all(a >= b) and np.any(a > b)

    for i, v in enumerate(vectors):
        # rank r: nobody of rank >= r dominates it, someone of rank r - 1 does
        assert not any(
            dominates(w, v)
            for w, r in zip(vectors, ranks, strict=True)
            if r >= ranks[i]
        )
        if ranks[i] > 0:
            assert any(
                dominates(w, v)
                for w, r in zip(vectors, ranks, strict=True)
                if r == ranks[i] - 1
            )
