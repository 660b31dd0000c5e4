"""Build docs/notebooks/grpo.ipynb from these cells.

python docs/notebooks/_build_grpo.py
"""

from pathlib import Path

import nbformat as nbf

cells = []


def md(source: str) -> None:
    cells.append(nbf.v4.new_markdown_cell(source.strip()))


def code(source: str) -> None:
    cells.append(nbf.v4.new_code_cell(source.strip()))


md("""
# GRPO on a verifiable task: SFT warm-up, then RL, seeds vmapped

`convergence_jax.llm` post-trains token policies with the GRPO family (GRPO, Dr. GRPO,
DAPO, GSPO, GEPO, VAPO, token PPO) as one compiled JAX program: sampling with the KV
cache, the reward, the advantages and the minibatch updates of every step, and a whole
run as one `lax.scan`, so `jax.vmap` trains several seeds at once. This notebook warms
a 2-layer transformer up by supervised fine-tuning on 2-digit addition, then improves
it by RL with the task's verifiable reward, and saves and restores the run.
`SMALL = True` (the default, used by the test suite: 2 seeds, at most 100 SFT
steps, 10 RL steps) shows the mechanics in about a minute on a CPU, not the
learning; `SMALL = False` runs the learning bar's setting (3 seeds, the full
warm-up, 600 RL steps, `benchmarks/grpo_learning.py`), quick on a GPU. The guide
is `docs/llm.md`.
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
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from convergence_jax import checkpoint, llm

SMALL = True  # False: the learning bar's full setting
recipe = llm.AdditionWarmup()  # the measured warm-up (see its docstring)
if SMALL:  # at most 100 SFT steps: a seed may stop before its jump
    recipe = llm.AdditionWarmup(max_steps=100)
task, model_config = recipe.task(), recipe.model_config()
num_seeds = 2 if SMALL else 3
keys = jax.random.split(jax.random.key(0), num_seeds)
print(jax.devices(), model_config.num_layers, "layers, width", model_config.hidden_size)
""")
md("""
## 1. Supervised warm-up

`llm.make_sft` trains on prompt + answer with the loss on the answer tokens only,
vmapped over seeds. Addition has a long loss plateau and then a sudden jump whose step
varies with the seed, so `run_until` trains each seed until its greedy exact match (on
problems apart from the held-out ones) reaches `recipe.target_accuracy`: every seed
starts RL partly right. `llm.evaluate` scores greedy completions of held-out problems
(`llm.eval_key`: a key stream no training step uses).
""")
code("""
sft = llm.make_sft(model_config, task, batch_size=recipe.batch_size,
                   hparams=recipe.hparams())
start = time.perf_counter()
sft_states, _ = jax.jit(jax.vmap(lambda s: sft.run_until(
    s, None, recipe.stop_key(), recipe.target_accuracy, recipe.max_steps,
    eval_every=recipe.eval_every, num_problems=recipe.eval_problems,
)))(jax.vmap(sft.init)(keys))


held_out = jax.jit(jax.vmap(lambda p: llm.evaluate(  # compiled once
    llm.eval_key(0), p, model_config, task, 128 if SMALL else 512)))


before = held_out(sft_states.params)
print(f"SFT {time.perf_counter() - start:.0f} s, steps per seed {sft_states.step};",
      "held-out exact match per seed:", np.round(before["exact_match"], 3))
""")
md("""
## 2. RL with a verifiable reward

`llm.make_grpo(config, model_config, task)` returns the program; `init` keeps a frozen
copy of the starting policy as the reference. Every step samples `group_size`
completions of `num_prompts` fresh problems, scores them with the exact-match reward
(`task.exact_match`; `task.reward` is partial credit), and makes two passes of
updates over them (`num_epochs=2`: the second is off-policy, with the old log-probs
recomputed and the ratio clipped). Change `loss=` to any of `llm.PROGRAM_LOSSES`.
""")
code("""
config = llm.GRPOConfig(loss="grpo", num_prompts=16, group_size=8, num_epochs=2,
                        max_new_tokens=task.answer_length + 4, learning_rate=2e-4)
program = llm.make_grpo(config, model_config, task._replace(reward=task.exact_match))
states = jax.vmap(program.init)(keys, sft_states.params)
chunk = 5 if SMALL else 50
run = jax.jit(jax.vmap(lambda s: program.run(s, None, chunk)))

curve, rewards = [np.asarray(before["exact_match"])], []
for _ in range(2 if SMALL else 12):  # SMALL: 2 x 5 steps
    states, metrics = run(states)
    rewards.append(np.asarray(metrics["reward"]))
    curve.append(np.asarray(held_out(states.params)["exact_match"]))
curve, rewards = np.stack(curve, 1), np.concatenate(rewards, 1)
print("held-out exact match per seed, before -> after RL:",
      np.round(curve[:, 0], 3), "->", np.round(curve[:, -1], 3))
""")
code("""
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
steps = np.arange(curve.shape[1]) * chunk
for s in range(num_seeds):
    axes[0].plot(steps, curve[s], marker="o", label=f"seed {s}")
    axes[1].plot(np.arange(1, rewards.shape[1] + 1), rewards[s], label=f"seed {s}")
axes[0].set(xlabel="RL step", ylabel="held-out exact match (greedy)")
axes[1].set(xlabel="RL step", ylabel="sampled reward")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
plt.show()
""")
md("""
## 3. Save, restore, continue

A `GRPOState` holds the policy, Adam's state, the reference, the key and the step;
`convergence_jax.checkpoint` saves it with orbax and a restored run continues exactly
as the uninterrupted one.
""")
code("""
path = checkpoint.save("runs/grpo_notebook/ckpt", states, step=int(states.step[0]),
                       overwrite=True)
restored = checkpoint.restore("runs/grpo_notebook/ckpt", like=states)
a, _ = run(states)
b, _ = run(restored)
same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a.params, b.params)
print("saved", path, "| resumed run identical:", all(jax.tree.leaves(same)))
""")
md("""
## Next

- `python experiments/grpo.py --task addition --loss dapo --num-seeds 3` does all of
  this from the command line, with a progress bar, `metrics.jsonl`, `curves.png`,
  `samples.txt`, a checkpoint and `summary.json`.
- `GRPOConfig(num_devices=N)` splits the prompts over N devices (`jax.shard_map`) and
  computes the 1-device run; `llm.grpo_hparam_grid` sweeps learning rates, beta or the
  clip range in the same compiled program.
- Python rewards (a code executor, an HTTP judge, `reasoning-gym` verifiers):
  `program.host_step(state, reward_fn)`.
- `docs/llm.md`: every loss with its formula and its TRL / Tunix equivalent.
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, Path(__file__).with_name("grpo.ipynb"))
