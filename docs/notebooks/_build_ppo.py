"""Build docs/notebooks/ppo.ipynb from these cells.

python docs/notebooks/_build_ppo.py
"""

import nbformat as nbf

cells = []


def md(source: str) -> None:
    cells.append(nbf.v4.new_markdown_cell(source.strip()))


def code(source: str) -> None:
    cells.append(nbf.v4.new_code_cell(source.strip()))


md("""
# PPO on gymnax: many seeds, sweeps and checkpoints in one compiled program

`convergence_jax.rl` trains PPO on [gymnax](https://github.com/RobertTLange/gymnax)
environments as one compiled JAX program (purejaxrl style): rollouts, advantages and
all the minibatch updates of a run are a single `lax.scan`, so `jax.vmap` trains many
seeds — and many hyperparameter settings — at once. This notebook trains CartPole with
several seeds, runs a learning-rate sweep without recompiling, and stops a run, saves
it, restores it and continues it exactly. `SMALL = True` (the default, used by the test
suite) keeps it to well under a minute on a CPU; set it to `False` on a GPU (or a
patient CPU) for runs that solve CartPole. The guide is `docs/rl.md`.
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

from convergence_jax import checkpoint, rl

SMALL = True  # set False for full-size runs (500k steps per seed, 8 seeds)
config = rl.PPOConfig(
    env_id="CartPole-v1",
    total_timesteps=20_480 if SMALL else 500_000,  # 40 / 976 updates of 4 x 128 steps
    num_envs=4,
    num_steps=128,
    learning_rate=1e-3 if SMALL else 2.5e-4,
    anneal_lr=False,  # a constant step size: section 3 trains the runs further
)
num_runs = 4 if SMALL else 8
print(jax.__version__, jax.devices(), f"{config.num_updates} updates per run")
""")
md("""
## 1. Several seeds in one call

`rl.make_train(config)` returns `train(key, hparams)`, a whole run as a pure function.
`jax.vmap` runs it for many `(key, hparams)` pairs at once; here every run has the
config's numbers and its own seed. The first call compiles (most of the time on a CPU);
`metrics` holds one value per update and run.
""")
code("""
train = rl.make_train(config)
program = jax.jit(jax.vmap(train))  # over (key, hparams) pairs
keys = jax.random.split(jax.random.key(0), num_runs)
hparams = rl.hparam_grid(config, learning_rate=[config.learning_rate] * num_runs)

start = time.perf_counter()
states, metrics = jax.block_until_ready(program(keys, hparams))
print(f"{num_runs} runs, compile + train: {time.perf_counter() - start:.1f} s")
returns = np.asarray(metrics["episode_return"])  # [runs, updates], NaN: no episode
steps = np.asarray(metrics["env_steps"][0])
print("last return per seed:", np.round(returns[:, -1], 1))
""")
md("""
`episode_return` is the mean return of the episodes that ended during an update (NaN
when none did). For the plot each seed's return is carried forward over such updates;
the band is the spread over seeds.
""")
code("""
def forward_fill(x):
    index = np.where(np.isfinite(x), np.arange(x.shape[-1]), 0)
    return np.take_along_axis(x, np.maximum.accumulate(index, axis=-1), axis=-1)


def plot_runs(ax, steps, returns, label):
    filled = forward_fill(returns)  # [seeds, updates]
    ok = np.isfinite(filled).all(0)
    (line,) = ax.plot(steps[ok], filled[:, ok].mean(0), label=label)
    low, high = filled[:, ok].min(0), filled[:, ok].max(0)
    ax.fill_between(steps[ok], low, high, color=line.get_color(), alpha=0.2)


fig, ax = plt.subplots(figsize=(6, 3.5))
plot_runs(ax, steps, returns, f"{num_runs} seeds (mean, min-max)")
ax.set(xlabel="environment steps per run", ylabel="episode return", title="CartPole-v1")
ax.legend()
ax.grid(alpha=0.3)
plt.show()
""")
md("""
## 2. A hyperparameter sweep without recompiling

Every number a sweep may change (learning rate, discount, GAE lambda, clip range, loss
coefficients, gradient clip, reward scale) lives in `rl.PPOHParams`, a pytree that
`train` takes as an argument. A grid of 2 learning rates x half as many seeds is as many
runs as above, so the compiled program is reused: this call only trains. (For a grid
that changes the number of runs, nest two `vmap`s: see `docs/rl.md`.)
""")
code("""
learning_rates = [2.5e-4, 1e-3]
seeds_per_lr = num_runs // len(learning_rates)
grid = rl.hparam_grid(config, learning_rate=np.repeat(learning_rates, seeds_per_lr))
sweep_keys = keys[np.tile(np.arange(seeds_per_lr), len(learning_rates))]  # same seeds

start = time.perf_counter()
_, sweep_metrics = jax.block_until_ready(program(sweep_keys, grid))
print(f"{num_runs} runs, train only: {time.perf_counter() - start:.1f} s")
sweep_returns = np.asarray(sweep_metrics["episode_return"]).reshape(
    len(learning_rates), seeds_per_lr, -1
)

fig, ax = plt.subplots(figsize=(6, 3.5))
for lr, lr_returns in zip(learning_rates, sweep_returns, strict=True):
    plot_runs(ax, steps, lr_returns, f"learning rate {lr:g} ({seeds_per_lr} seeds)")
ax.set(xlabel="environment steps per run", ylabel="episode return")
ax.legend()
ax.grid(alpha=0.3)
plt.show()
""")
md("""
## 3. Save, restore, train on

`rl.make_ppo(config)` exposes the parts of `train`: `init(key, hparams)` and
`run(state, hparams, num_updates)`. The `TrainState` holds everything a run needs —
parameters, optimizer state, environment states, one PRNG key per environment,
observation statistics and the update counter — and `convergence_jax.checkpoint` saves
it with orbax, typed PRNG keys included. Here the final states of section 1 are saved,
restored, and trained further. (This config has a constant step size; with the default
`anneal_lr=True` the step size reaches 0 at `config.num_updates`, so a run stops and
resumes within that budget: see `docs/rl.md`.)
""")
code("""
path = checkpoint.save(
    "runs/ppo_notebook/ckpt", states, step=config.num_updates, overwrite=True
)
print("saved", path)

# In a new process, `like` would be a fresh state: jax.vmap(ppo.init)(keys, hparams).
restored = checkpoint.restore(
    "runs/ppo_notebook/ckpt", like=states, step=config.num_updates
)


def assert_same(a, b):  # typed PRNG keys compare through their key data
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)


jax.tree.map(assert_same, states, restored)
print("the restored states equal the saved ones, leaf by leaf")
""")
code("""
ppo = rl.make_ppo(config)
more = config.num_updates // 2
run_more = jax.jit(jax.vmap(lambda state, h: ppo.run(state, h, more)))
restored, later = run_more(restored, hparams)
print("updates done per run:", np.asarray(restored.step))

fig, ax = plt.subplots(figsize=(6, 3.5))
plot_runs(ax, steps, returns, "section 1")
later_steps = np.asarray(later["env_steps"][0])
plot_runs(ax, later_steps, np.asarray(later["episode_return"]), "restored, trained on")
ax.set(xlabel="environment steps per run", ylabel="episode return")
ax.legend()
ax.grid(alpha=0.3)
plt.show()
""")
md("""
## Next

- `python experiments/ppo.py --env CartPole-v1 --num-seeds 8` runs all of this from the
  command line with a progress bar and writes `metrics.jsonl`, `learning_curve.png`,
  `summary.json` and a checkpoint; `--preset pendulum` has Pendulum-v1 settings that
  learn, `--learning-rates 1e-4 3e-4 1e-3` sweeps.
- `PPOConfig(num_devices=N)` splits each run's environments over N devices with
  `jax.shard_map` and computes the same run as one device.
- `docs/rl.md` covers the building blocks (GAE with time limits, the PPO losses), the
  networks, observation normalization and reward scaling.
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
}
nbf.write(nb, "docs/notebooks/ppo.ipynb")
