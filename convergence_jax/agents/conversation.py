"""Conversations between an agent and a simulated user, recorded as
`MultiTurnTrajectory` (host side).

A `Scenario` says what a conversation is about (``topic``, ``context``) and who
the user is: scripted turns, a Python user simulator, a user model (any backend
with ``complete``: `OpenAIBackend` for an external LLM, `StubBackend`, or our
`JaxBackend`), or scripted opening turns followed by a simulator or a model.
`ConversationEnv.run_episode` alternates user and agent turns until the goal is
met (``goal_fn(trajectory) -> bool`` or a ``goal_phrase`` in the agent's last
answer), the user ends (scripted turns exhausted, ``None`` from the simulator,
or the ``end_marker`` in the user's message) or ``max_turns`` agent answers,
then scores the trajectory. `run_episodes` runs many; a reward that raises or
returns NaN, an agent or user that raises, is recorded per episode, never lost.

With a `DomainRandomizer` (`convergence_jax.agents.randomizer`), each episode
draws a `UserProfile` (persona, topic, style): scripted turns may use
``{persona}``, ``{topic}`` and ``{style}`` placeholders (and any key of a dict
``context``, e.g. ``{order_id}``, which the style may use too), a user model's
system prompt describes the persona, request and style, and a simulator sees
the profile on ``scenario.user_profile``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from convergence_jax.agents.agent import check_messages
from convergence_jax.agents.rewards import FALLBACK_REWARD, score_trajectories
from convergence_jax.agents.trajectory import MultiTurnTrajectory, Turn

TERMINATIONS = ("goal_reached", "user_ended", "user_done", "max_turns", "error")
DEFAULT_END_MARKER = "[END]"
DEFAULT_USER_PROMPT = (
    "You play a user talking to an assistant. Topic: {topic}.{context}{profile} "
    "Write only your next message to the assistant, in the first person. When "
    "your request is fully handled, write {end_marker}."
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(template: str, values: Mapping[str, Any]) -> str:
    """Replace ``{name}`` for the names in ``values``; other braces stay."""
    return _PLACEHOLDER.sub(
        lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0),
        template,
    )


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One conversation to run.

    Args:
        id: names the scenario (the trajectory's ``scenario_id``).
        topic: what it is about (shown to a user model).
        context: free-form facts (a string or a JSON dict; a dict's keys fill
            ``{name}`` placeholders in scripted turns); the agent gets it as
            ``context["scenario"]``.
        user_turns: scripted user messages, in order.
        user_simulator: ``fn(messages, scenario) -> str | None``: the next user
            message given the conversation so far (OpenAI format, from the
            agent's side); ``None`` ends the conversation.
        user_model: a backend (``complete(messages) -> Completion``) that plays
            the user: it sees the conversation with roles swapped and a system
            prompt (``user_system_prompt``, default `DEFAULT_USER_PROMPT`).
        user_system_prompt: the user model's system prompt; may use
            ``{topic}``, ``{context}``, ``{profile}``, ``{end_marker}``.
        goal_phrase: the goal is met when the agent's last answer contains it
            (case-insensitive).
        goal_fn: ``fn(trajectory) -> bool``: the goal is met (checked after
            each agent answer; wins over ``goal_phrase`` when both are given).
        end_marker: a user message containing it ends the conversation (the
            marker is cut; what remains, if anything, is kept as the last user
            turn).
        user_profile: set per episode by a randomizer.

    Scripted turns are used first; after them the simulator, else the model,
    continues; with neither, the conversation ends when they run out. A
    scenario without any user side raises ``ValueError``.
    """

    id: str
    topic: str = ""
    context: str | dict | None = None
    user_turns: tuple[str, ...] = ()
    user_simulator: Callable | None = None
    user_model: Any = None
    user_system_prompt: str = DEFAULT_USER_PROMPT
    goal_phrase: str | None = None
    goal_fn: Callable | None = None
    end_marker: str = DEFAULT_END_MARKER
    user_profile: Any = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Scenario.id must be a non-empty string, got {self.id!r}")
        where = f"Scenario {self.id!r}"
        if not isinstance(self.topic, str):
            raise ValueError(f"{where}: topic must be a string")
        if self.context is not None and not isinstance(self.context, str | Mapping):
            raise ValueError(f"{where}: context must be a string, a dict or None")
        if isinstance(self.context, Mapping):
            object.__setattr__(self, "context", dict(self.context))
        turns = self.user_turns
        if isinstance(turns, str) or not isinstance(turns, Sequence):
            raise ValueError(f"{where}: user_turns must be a list of strings")
        turns = tuple(turns)
        for i, turn in enumerate(turns):
            if not isinstance(turn, str) or not turn.strip():
                raise ValueError(
                    f"{where}: user_turns[{i}] must be a non-empty string, got {turn!r}"
                )
        object.__setattr__(self, "user_turns", turns)
        if self.user_simulator is not None and not callable(self.user_simulator):
            raise ValueError(f"{where}: user_simulator must be callable")
        if self.user_model is not None and not callable(
            getattr(self.user_model, "complete", None)
        ):
            raise ValueError(
                f"{where}: user_model must have a complete(messages) method (a "
                "backend such as OpenAIBackend)"
            )
        if not turns and self.user_simulator is None and self.user_model is None:
            raise ValueError(
                f"{where} has no user side: give user_turns, a user_simulator or a "
                "user_model"
            )
        if self.goal_fn is not None and not callable(self.goal_fn):
            raise ValueError(f"{where}: goal_fn must be callable")
        if self.goal_phrase is not None and (
            not isinstance(self.goal_phrase, str) or not self.goal_phrase.strip()
        ):
            raise ValueError(f"{where}: goal_phrase must be a non-empty string")
        if not isinstance(self.end_marker, str) or not self.end_marker:
            raise ValueError(f"{where}: end_marker must be a non-empty string")
        if not isinstance(self.user_system_prompt, str):
            raise ValueError(f"{where}: user_system_prompt must be a string")

    def template_values(self) -> dict[str, Any]:
        """What ``{name}`` placeholders in scripted turns are filled with."""
        values = dict(self.context) if isinstance(self.context, Mapping) else {}
        values.setdefault("topic", self.topic)
        profile = self.user_profile
        if profile is not None:
            values["persona"] = profile.persona
            values["topic"] = profile.topic
            values["style"] = _fill(profile.style, values)
        return values


class EpisodeReport(NamedTuple):
    """`ConversationEnv.run_episodes`'s result, one entry per scenario:
    the trajectory (``None`` when the episode failed before its first turn),
    its reward (``fallback`` where the episode or its reward failed, NaN when
    no reward function was given), its error (the episode's or the
    reward's, ``None`` when clean), and the count of failures."""

    trajectories: list[MultiTurnTrajectory | None]
    rewards: np.ndarray
    errors: list[str | None]
    num_failures: int


class EpisodeError(RuntimeError):
    """An episode failed before it had a turn to record."""


def _swap(messages: Sequence[Mapping]) -> list[dict]:
    """The conversation from the user's side: its user turns are the model's
    own (assistant), the agent's answers come in as user turns; tool traffic
    is the agent's business and left out."""
    out = []
    for m in messages:
        if m["role"] == "user":
            out.append({"role": "assistant", "content": m["content"]})
        elif m["role"] == "assistant" and m.get("content"):
            if m.get("tool_calls") is None:
                out.append({"role": "user", "content": m["content"]})
    return out


class ConversationEnv:
    """Runs agents through scenarios.

    Args:
        max_turns: the most agent answers per episode (default for
            `run_episode`).
        reward_fn: the default reward (any reward of `agents.rewards`, a
            `CompositeReward`, ``LLMJudge.as_reward()``); its value becomes the
            trajectory's ``final_reward``.
        turn_reward_fn: scores the conversation so far after each agent
            answer; the value goes on that answer's turn (failures in its
            metadata, ``reward_error``).
        goal_fn: the default goal when a scenario has none.
        randomizer: a `DomainRandomizer`; each episode draws a `UserProfile`
            from ``np.random.default_rng(seed)`` (one stream for the env's
            life, so episode ``i`` of a fresh env with the same seed draws the
            same user).
        fallback: the reward of an episode whose reward failed.
    """

    def __init__(
        self,
        max_turns: int = 8,
        reward_fn: Callable | None = None,
        turn_reward_fn: Callable | None = None,
        goal_fn: Callable | None = None,
        randomizer=None,
        seed: int = 0,
        fallback: float = FALLBACK_REWARD,
    ):
        _check_max_turns(max_turns)
        for name, fn in (
            ("reward_fn", reward_fn),
            ("turn_reward_fn", turn_reward_fn),
            ("goal_fn", goal_fn),
        ):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be callable, got {fn!r}")
        if randomizer is not None and not callable(getattr(randomizer, "sample", None)):
            raise ValueError("randomizer must have a sample(seed_or_rng) method")
        self.max_turns = max_turns
        self.reward_fn = reward_fn
        self.turn_reward_fn = turn_reward_fn
        self.goal_fn = goal_fn
        self.randomizer = randomizer
        self.rng = np.random.default_rng(seed)
        self.fallback = float(fallback)

    # ------------------------------------------------------------------ users
    def _user_prompt(self, scenario: Scenario) -> str:
        context = scenario.context
        if isinstance(context, Mapping):
            context = "; ".join(f"{k}: {v}" for k, v in context.items())
        profile = scenario.user_profile
        described = ""
        if profile is not None:
            style = _fill(profile.style, scenario.template_values())
            described = (
                f" You are: {profile.persona} Your request: {profile.topic} When "
                f"asked for details, answer like: {style}"
            )
        return _fill(
            scenario.user_system_prompt,
            {
                "topic": scenario.topic or "(none)",
                "context": f" Context: {context}." if context else "",
                "profile": described,
                "end_marker": scenario.end_marker,
            },
        )

    def _next_user(self, scenario: Scenario, messages, index: int):
        """``(text, ended)``: the user's next message (None when they are done)
        and whether they said the end marker."""
        if index < len(scenario.user_turns):
            text = _fill(scenario.user_turns[index], scenario.template_values())
        elif scenario.user_simulator is not None:
            text = scenario.user_simulator(list(messages), scenario)
            if text is not None and not isinstance(text, str):
                raise ValueError(
                    f"the user simulator returned {type(text).__name__}, not a "
                    "string or None"
                )
        elif scenario.user_model is not None:
            view = [
                {"role": "system", "content": self._user_prompt(scenario)},
                *_swap(messages),
            ]
            text = scenario.user_model.complete(view).text
        else:
            return None, False
        if text is None:
            return None, False
        if scenario.end_marker in text:
            rest = text.replace(scenario.end_marker, "").strip()
            return (rest or None), True
        return text, False

    # ---------------------------------------------------------------- episode
    def _goal_met(self, scenario: Scenario, trajectory) -> bool:
        goal_fn = scenario.goal_fn or self.goal_fn
        if goal_fn is not None:
            return bool(goal_fn(trajectory))
        if scenario.goal_phrase is not None:
            answers = trajectory.assistant_turns()
            return bool(answers) and (
                scenario.goal_phrase.casefold() in answers[-1].content.casefold()
            )
        return False

    def _score(self, fn, trajectory) -> tuple[float, str | None]:
        report = score_trajectories(fn, [trajectory], fallback=self.fallback)
        return float(report.rewards[0]), report.errors[0]

    def run_episode(
        self,
        agent,
        scenario: Scenario,
        reward_fn: Callable | None = None,
        max_turns: int | None = None,
        profile=None,
    ) -> MultiTurnTrajectory:
        """One conversation, scored.

        ``agent`` is a `MultiTurnAgent` / `ToolAgent` (its ``respond`` gives the
        new turns, tool calls included) or anything with
        ``generate_response(messages, context) -> str``. ``profile`` overrides
        the randomizer's draw. ``reward_fn`` and ``max_turns`` default to the
        env's.

        The trajectory holds the user, assistant and tool turns (not the
        agent's own system prompt or plan, which it adds to each prompt). Its
        metadata: ``termination`` (one of `TERMINATIONS`), ``agent_turns``,
        ``topic``, ``system_prompt`` (the agent's, when it has one),
        ``user_profile`` (when randomized),
        ``reward_error`` (when the reward failed: ``final_reward`` is then the
        fallback), ``error`` (when the agent, the user or the goal check raised:
        the conversation up to there is kept). An episode that fails before its
        first turn raises `EpisodeError`.
        """
        if not isinstance(scenario, Scenario):
            raise ValueError(
                f"scenario must be a Scenario, got {type(scenario).__name__}"
            )
        respond = getattr(agent, "respond", None)
        if not callable(respond) and not callable(
            getattr(agent, "generate_response", None)
        ):
            raise ValueError(
                "agent must have respond(messages, context) or "
                "generate_response(messages, context)"
            )
        max_turns = self.max_turns if max_turns is None else max_turns
        _check_max_turns(max_turns)
        reward_fn = self.reward_fn if reward_fn is None else reward_fn
        if profile is None and self.randomizer is not None:
            profile = self.randomizer.sample(self.rng)
        if profile is not None:
            scenario = dataclasses.replace(scenario, user_profile=profile)
        context = {"conversation_id": scenario.id}
        if scenario.context is not None:
            context["scenario"] = scenario.context
        if hasattr(agent, "reset"):
            agent.reset(scenario.id)

        turns: list[Turn] = []
        termination, error = "max_turns", None
        agent_turns = user_index = 0
        try:
            while agent_turns < max_turns:
                messages = [t.message() for t in turns]
                text, ended = self._next_user(scenario, messages, user_index)
                user_index += 1
                if text is not None:
                    turns.append(Turn("user", text))
                if ended or text is None:
                    termination = "user_ended" if ended else "user_done"
                    break
                messages = check_messages([t.message() for t in turns])
                if callable(respond):
                    new = list(respond(messages, context))
                else:
                    new = [
                        Turn("assistant", agent.generate_response(messages, context))
                    ]
                for turn in new:
                    turns.append(
                        turn if isinstance(turn, Turn) else Turn.from_dict(turn)
                    )
                agent_turns += 1
                if self.turn_reward_fn is not None:
                    value, problem = self._score(
                        self.turn_reward_fn, MultiTurnTrajectory(tuple(turns))
                    )
                    meta = dict(turns[-1].metadata)
                    if problem is not None:
                        meta["reward_error"] = problem
                    turns[-1] = dataclasses.replace(
                        turns[-1], reward=value, metadata=meta
                    )
                if self._goal_met(scenario, MultiTurnTrajectory(tuple(turns))):
                    termination = "goal_reached"
                    break
        except Exception as problem:  # an agent or user failure: keep the turns
            termination, error = "error", f"{type(problem).__name__}: {problem}"
        if not turns:
            raise EpisodeError(
                f"scenario {scenario.id!r}: no turn to record"
                + (f" ({error})" if error else " (the user said nothing)")
            )
        metadata: dict[str, Any] = {
            "termination": termination,
            "agent_turns": agent_turns,
            "topic": scenario.topic,
        }
        system_prompt = getattr(agent, "system_prompt", None)
        if isinstance(system_prompt, str):
            metadata["system_prompt"] = system_prompt
        if profile is not None:
            metadata["user_profile"] = {
                "persona": profile.persona,
                "topic": profile.topic,
                "style": profile.style,
                "indices": list(getattr(profile, "indices", ())),
            }
        if error is not None:
            metadata["error"] = error
        trajectory = MultiTurnTrajectory(
            tuple(turns), scenario_id=scenario.id, metadata=metadata
        )
        if reward_fn is not None:
            value, problem = self._score(reward_fn, trajectory)
            if problem is not None:
                metadata["reward_error"] = problem
            trajectory = dataclasses.replace(
                trajectory, final_reward=value, metadata=metadata
            )
        return trajectory

    def run_episodes(
        self,
        agent,
        scenarios: Sequence[Scenario],
        reward_fn: Callable | None = None,
        max_turns: int | None = None,
    ) -> EpisodeReport:
        """`run_episode` over every scenario, in order; nothing is lost: a
        failed episode or reward is an entry with its error."""
        if isinstance(scenarios, Scenario) or not isinstance(scenarios, Sequence):
            raise ValueError("scenarios must be a list of Scenario")
        if not scenarios:
            raise ValueError("run_episodes needs at least one scenario")
        trajectories, rewards, errors = [], [], []
        for scenario in scenarios:
            try:
                trajectory = self.run_episode(agent, scenario, reward_fn, max_turns)
            except EpisodeError as problem:
                trajectories.append(None)
                rewards.append(self.fallback)
                errors.append(str(problem))
                continue
            trajectories.append(trajectory)
            meta = trajectory.metadata
            problems = [meta[k] for k in ("error", "reward_error") if k in meta]
            errors.append("; ".join(problems) if problems else None)
            final = trajectory.final_reward
            rewards.append(np.nan if final is None else final)
        return EpisodeReport(
            trajectories,
            np.asarray(rewards, np.float64),
            errors,
            sum(e is not None for e in errors),
        )


def _check_max_turns(max_turns) -> None:
    if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"max_turns must be an int >= 1, got {max_turns!r}")
