"""Build docs/notebooks/agents.ipynb from these cells.

python docs/notebooks/_build_agents.py
"""

from pathlib import Path

import nbformat as nbf

cells = []


def md(source: str) -> None:
    cells.append(nbf.v4.new_markdown_cell(source.strip()))


def code(source: str) -> None:
    cells.append(nbf.v4.new_code_cell(source.strip()))


md("""
# A customer-service agent: SFT on expert demos, then multi-turn GRPO

`convergence_jax.agents` trains agents on whole conversations. This notebook takes
the customer-service `TaskEnv` (orders, a scripted user, a lookup tool, a refund
rule), warms a small transformer up by supervised fine-tuning on the env's scripted
expert, improves it with multi-turn GRPO (every conversation sampled with the KV
cache turn by turn, the env's replies fed into the cache, the loss on the agent's
own tokens), compares held-out and training success, lets the trained model answer
a conversation through `MultiTurnAgent`, scores conversations with a Python reward,
and saves and reloads the agent.

`SMALL = True` (the default, used by the test suite: a 1-layer width-32 model,
conversations of up to 3 agent turns, 20 SFT steps at most, 4 GSPO steps of 2 x 4
conversations; the programs of `docs/agents.md`'s example, so the suite compiles
them once) shows the **mechanics** in well under a minute on a CPU, **not the
learning**: its success rates stay near 0. `SMALL = False` runs one seed of the
multi-turn learning bar's setting (`benchmarks/agents_learning.py`: a 2-layer
width-64 model, up to 4 agent turns, 4,096 demonstrations, SFT stopped at 20%
greedy training success, 100 GRPO steps of 4 x 8 conversations; the benchmark
vmaps 3 seeds), quick on a GPU. That bar (held-out success +20 points over SFT)
is **not met yet**: the measured run is in `benchmarks/results/agents_learning.md`.
The guide is `docs/agents.md`.
""")
code("""
# On Colab: set REPO to the git URL of your convergence_jax checkout; the cell
# installs it when the library is not importable yet (it does nothing locally).
import importlib.util
import subprocess
import sys

REPO = ""  # e.g. "git+https://github.com/<you>/convergence_jax"
if importlib.util.find_spec("convergence_jax") is None:
    if not REPO:
        raise RuntimeError("convergence_jax is not installed: set REPO above")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", REPO], check=True)
""")
code("""
import dataclasses
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from convergence_jax import llm, lm
from convergence_jax.agents import export, multiturn
from convergence_jax.agents.agent import JaxBackend, MultiTurnAgent
from convergence_jax.agents.randomizer import DomainRandomizer
from convergence_jax.agents.rewards import reward_function, score_trajectories
from convergence_jax.agents.task_env import (
    customer_service_env,
    to_trajectories,
)

SMALL = True  # False: the multi-turn learning bar's setting
print(jax.devices())
""")
md("""
## 1. The environment

`customer_service_env` builds a table of orders (a 4-digit id, delivered or in
transit, days since delivery, an amount) and simulated users from a
`DomainRandomizer` (a persona = greeting, a topic = request, a style = how they give
their order id; `strength` is the probability of a non-default option). The user
asks for a refund without giving the order id. The agent speaks a protocol, one
command per turn: `ask id` (the user replies with the id, in their style),
`lookup 4821` (the tool replies with the record), then `refund 4821` or
`deny 4821`. **Refund iff delivered less than 30 days ago.** Reward 1 for the right
action on the user's own id after looking it up, else 0: a success takes three
agent turns. Held-out scenarios use orders *and* users (the randomizer's options,
split in two) that no training scenario has.

`reset` and `step` are pure JAX on token arrays, so a batch of whole conversations
is one compiled program.
""")
code("""
tokenizer = lm.ByteTokenizer()
users = DomainRandomizer.customer_service(strength=0.7)
env = customer_service_env(tokenizer, users, max_turns=3 if SMALL else 4)
for split in ("train", "held_out"):
    print(split, "greetings:", env.users[split].options("persona"))
print("held-out orders:", len(env.split_orders["held_out"]), "of",
      len(env.order_ids), "| tokens per conversation:", env.sequence_length,
      f"(prompt {env.prompt_length}, {env.max_turns} turns)")
""")
md("""
## 2. Supervised warm-up on the scripted expert

`multiturn.make_multiturn_sft` draws `num_demos` training scenarios and plays the
scripted expert on them (ask, look up, act by the rule): the demonstrations, in the
same token layout as the model's own rollouts. Here is one, read back as a
`MultiTurnTrajectory` (`to_trajectories`; each turn's metadata is what the env
parsed):
""")
code("""
model_config = lm.LMConfig(
    vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
    num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
    max_position_embeddings=env.sequence_length,
)
if not SMALL:  # the learning bar's model
    model_config = dataclasses.replace(
        model_config, hidden_size=64, intermediate_size=256, num_layers=2,
        num_heads=4, num_kv_heads=4, rope_theta=1000.0,
    )
sft = multiturn.make_multiturn_sft(
    model_config, env, num_demos=16 if SMALL else 4096,
    batch_size=8 if SMALL else 32,
)
demo = to_trajectories(env, jax.tree.map(lambda x: x[:1], sft.demos))[0]
for turn in demo.turns:
    print(f"{turn.role:>9}: {turn.content!r:38} {turn.metadata}")
print("reward:", demo.final_reward, "| order:", demo.metadata)
""")
md("""
SFT minimizes the negative log-likelihood of the agent's tokens only (the user's and
the tool's tokens are attended to, not trained on). `run_until` trains until the
greedy success on training scenarios (a probe set apart from the evaluation's)
reaches the target, or `max_steps`: stopped early on purpose, so that RL has room.
It is one `lax.while_loop`, so `jax.vmap` over initial states trains several
seeds in one program (as the benchmark does).
""")
code("""
start = time.perf_counter()
warm, probe = jax.jit(lambda s: sft.run_until(
    s, 0.2, 20 if SMALL else 3000, eval_every=10 if SMALL else 50,
    num_scenarios=8 if SMALL else 128,
))(sft.init(jax.random.key(0)))
print(f"SFT {time.perf_counter() - start:.0f} s: {int(warm.step)} steps, greedy",
      f"success on the training probe {float(probe):.2f}")
""")
md("""
## 3. Multi-turn GRPO

`multiturn.make_multiturn_grpo(config, model_config, env)`: every step samples
`group_size` conversations of each of `num_prompts` fresh training scenarios, scores
them with the env's 0/1 success, computes group advantages and updates the policy on
its own tokens (`llm.Rollout.loss_mask`). `config.loss` is any group loss (`grpo`,
`dr_grpo`, `dapo`, `gspo`, ...). `program.run` is one `lax.scan` over steps;
`program.evaluate` is the greedy success rate on held-out (orders and users) or
training scenarios.
""")
code("""
config = llm.GRPOConfig(
    loss="gspo" if SMALL else "grpo", num_prompts=2 if SMALL else 4,
    group_size=4 if SMALL else 8, learning_rate=3e-4 if SMALL else 5e-4,
)
program = multiturn.make_multiturn_grpo(config, model_config, env)
num_eval = 8 if SMALL else 128


def held_out_and_train(params):
    return [float(program.evaluate(params, held_out=split, num_scenarios=num_eval))
            for split in (True, False)]


chunk = 2 if SMALL else 20
state = program.init(jax.random.key(1), warm.params)
start = time.perf_counter()
curve, sampled = [held_out_and_train(warm.params)], []
for _ in range(2 if SMALL else 5):
    state, metrics = program.run(state, num_steps=chunk)  # one lax.scan
    sampled.extend(np.asarray(metrics["success"]))
    curve.append(held_out_and_train(state.params))
curve = np.array(curve)  # [evaluations, (held out, train)]
print(f"GRPO {time.perf_counter() - start:.0f} s")
print("greedy success, SFT -> GRPO: held out", curve[0, 0], "->", curve[-1, 0],
      "| train", curve[0, 1], "->", curve[-1, 1])
""")

code("""
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
steps = np.arange(len(curve)) * chunk
axes[0].plot(steps, curve[:, 0], marker="o", label="held out")
axes[0].plot(steps, curve[:, 1], marker="o", label="train")
axes[1].plot(np.arange(1, len(sampled) + 1), sampled)
axes[0].set(xlabel="GRPO step (0 = after SFT)", ylabel="greedy success", ylim=(0, 1))
axes[0].legend()
axes[1].set(xlabel="GRPO step", ylabel="sampled success (training)", ylim=(0, 1))
for ax in axes:
    ax.grid(alpha=0.3)
plt.show()
""")

md("""
## 4. The trained model as a chat agent

The compiled program is for training; to talk to the model, wrap its parameters in
a `JaxBackend` (the tokenizer's chat template, `lm.generate` with the KV cache,
prompts padded to buckets so a growing conversation reuses the compiled program)
and a `MultiTurnAgent`. Below it answers at each of the agent's turns of the
demonstration above (given the conversation so far), next to what the expert
said. The same agent classes run host-side conversations (`ConversationEnv`),
function calling (`ToolAgent`) and other models (`StubBackend`, `OpenAIBackend`
for any OpenAI-compatible endpoint): `docs/agents.md`.
""")
code("""
params = state.params
agent = MultiTurnAgent(JaxBackend(
    params, model_config, tokenizer, max_new_tokens=env.turn_tokens,
    min_prompt_bucket=env.sequence_length,  # one prompt bucket: one compile
))
messages = demo.messages()  # the demonstration of section 2
for i, message in enumerate(messages):
    if message["role"] == "assistant":
        answer = agent.generate_response(messages[:i])
        print(f"expert: {message['content']!r:16} model: {answer!r}")
    else:
        print(f"{message['role']}: {message['content']}")
""")
md("""
## 5. Rewards in Python

The env's reward is its verifiable success; any Python score of the conversations
can replace it. A reward is a function of a `MultiTurnTrajectory` (or of its text,
`@reward_function(takes="text")`); `CompositeReward` weighs several,
`score_trajectories` scores a batch and records failures instead of raising. In
training, `program.sample(state)` gives the conversations, `to_trajectories` reads
them, and `program.learn(state, conversations, rewards)` trains on the scores
(`multiturn.train(..., reward_fn=...)` does this loop). A learned reward model
(`agents.reward_model`: our transformer with a scalar head, Bradley-Terry on
preference pairs) is one more such function.
""")
code("""
@reward_function
def success_in_few_turns(trajectory):
    agent_turns = sum(t.role == "assistant" for t in trajectory.turns)
    return trajectory.final_reward - 0.1 * max(agent_turns - 3, 0)


@reward_function
def flaky_judge(trajectory):
    raise TimeoutError("the judge did not answer")


conversations = to_trajectories(env, jax.tree.map(lambda x: x[:4], sft.demos))
for fn in (success_in_few_turns, flaky_judge):
    report = score_trajectories(fn, conversations)
    print(fn.name, report.rewards, "failures:", report.num_failures, report.errors[0])
""")
md("""
## 6. Save and load the agent

An agent checkpoint is one folder: the model as a Hugging Face folder
(`config.json` + `model.safetensors`, loadable by `transformers`), the tokenizer and
`agent.json` (name, system prompt, generation defaults, free-form metadata).
`load_chat_agent` gives a ready `MultiTurnAgent`; `convergence-jax agents serve
--checkpoint runs/cs-agent` serves it as an OpenAI-compatible endpoint.
""")
code("""
folder = export.save_agent(
    "runs/cs-agent", params, model_config, tokenizer, name="cs-agent",
    generation={"temperature": 0.0, "max_tokens": env.turn_tokens},
    metadata={"held_out_success": float(curve[-1, 0])},
)
loaded, loaded_config, _, meta = export.load_agent(folder)
same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, loaded)
chat_agent, _ = export.load_chat_agent(folder)
question = messages[:5]  # up to the tool's reply: the same prompt bucket
print(meta.name, meta.metadata, "| weights identical:", all(jax.tree.leaves(same)))
print("reloaded agent:", repr(chat_agent.generate_response(question)),
      "| before saving:", repr(agent.generate_response(question)))
""")
md("""
## Next

- `convergence-jax agents train agent.yaml` with `train.algorithm: grpo` does the
  warm-up and GRPO from a YAML file, with `metrics.jsonl`, orbax checkpoints (exact
  resume) and an agent checkpoint.
- `multiturn.train(...)` is the Python entry point with profiles (`conservative`,
  `balanced`, `aggressive`).
- `benchmarks/agents_learning.py`: the learning bar (not met yet, measured);
  `benchmarks/agents_speed.py`: the speed against StateSet Agents.
- `docs/agents.md`: trajectories, rewards, the reward model, agents, tools, the LLM
  judge, continual learning and the chat endpoint.
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, Path(__file__).with_name("agents.ipynb"))
