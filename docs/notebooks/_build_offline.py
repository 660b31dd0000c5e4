"""Build docs/notebooks/offline.ipynb from these cells.

python docs/notebooks/_build_offline.py
"""

from pathlib import Path

import nbformat as nbf

cells = []


def md(source: str) -> None:
    cells.append(nbf.v4.new_markdown_cell(source.strip()))


def code(source: str) -> None:
    cells.append(nbf.v4.new_code_cell(source.strip()))


md("""
# Offline RL and sim-to-real

1. **Datasets** (`offline.collect_datasets`): one PPO run on a gymnax environment
   gives D4RL's five kinds (random, medium, medium-replay, expert, medium-expert),
   with the reference returns of the normalized score (random = 0, expert = 100).
2. **Offline algorithms** (`offline.ALGORITHMS`: BC, TD3+BC, CQL, IQL, BCQ, BEAR;
   and the Decision Transformer in `offline.dt`): each a compiled program trained
   on the logged transitions only, seeds vmapped, then evaluated in the
   environment.
3. **Sim-to-real** (`sim2real`): every environment of a batch draws its own physics
   (domain randomization), system identification from a log of the "real" system,
   and the sim-to-real gap.

`SMALL = True` (the default, used by the test suite) shrinks every budget so that
the notebook runs in well under a minute on a CPU: it shows the **mechanics**, not
the learning. `SMALL = False` uses the benchmark's budgets (minutes on a CPU). The
measured figures are in `benchmarks/results/offline_learning.md` and
`benchmarks/results/sim2real_transfer.md`; the guides are `docs/offline.md` and
`docs/sim2real.md`.
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
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from convergence_jax import offline, rl, sim2real

SMALL = True
""")
md("""
## 1. A dataset collected in-process

A deliberately small PPO run on CartPole-v1 when `SMALL`; `PPO_PRESETS` (the
default, `ppo=None`) otherwise. The medium policy is the first checkpoint a third
to half of the way from random to expert; medium-replay is everything the PPO run
collected and learned from up to it.
""")
code("""
if SMALL:
    ppo = rl.PPOConfig(env_id="CartPole-v1", total_timesteps=4096, num_envs=8,
                       num_steps=32, num_minibatches=2, update_epochs=2,
                       hidden_sizes=(32,), learning_rate=3e-3)
    collect = offline.CollectConfig(ppo=ppo, num_transitions=2000, num_envs=8,
                                    eval_every=4, eval_episodes=4,
                                    reference_episodes=16)
else:
    collect = offline.CollectConfig()
datasets = offline.collect_datasets(jax.random.key(0), "CartPole-v1",
                                    ("random", "medium", "medium-replay"), collect)
for ds in datasets.values():
    print(f"{ds.name:28s} {ds.size:7d} transitions  {ds.num_episodes:4d} episodes  "
          f"normalized score {ds.normalized_score:6.1f}")
""")
md("""
## 2. BC, CQL and IQL on the medium-replay data, seeds vmapped

(`SMALL` trains BC and CQL only, for 300 updates: the scores it prints are those of
barely trained policies.)

`make_algorithm(name, obs_dim, spec, **config)` builds a program; `program.train(key,
data)` is one compiled run; `jax.vmap` over keys trains several seeds at once.
Each trained policy is scored in the environment with `evaluate_policy` and D4RL's
normalized score.
""")
code("""
data = datasets["medium-replay"]
obs_dim, spec = offline.env_spec("CartPole-v1")
num_steps = 300 if SMALL else 20_000
seeds = jax.random.split(jax.random.key(1), 2 if SMALL else 4)

scores = {}
for name in ("bc", "cql") if SMALL else ("bc", "cql", "iql"):
    program = offline.make_algorithm(name, obs_dim, spec, num_steps=num_steps,
                                     hidden_sizes=(64, 64))
    states, metrics = jax.jit(jax.vmap(program.train, in_axes=(0, None)))(
        seeds, data.transitions)

    def score(state, key):
        act = functools.partial(program.policy, state)
        return offline.evaluate_policy(key, "CartPole-v1", act, 8 if SMALL else 64)

    returns = jax.jit(jax.vmap(score))(states, seeds)
    scores[name] = [data.score(r) for r in np.asarray(returns)]
    print(f"{name:4s} normalized score per seed: "
          + ", ".join(f"{s:5.1f}" for s in scores[name]))
""")
code("""
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(list(scores), [np.mean(s) for s in scores.values()],
       yerr=[np.std(s) for s in scores.values()], capsize=4)
ax.axhline(data.normalized_score, color="gray", ls="--", label="the data's own")
ax.set_ylabel("normalized score")
ax.set_title("CartPole-v1 medium-replay" + (" (SMALL)" if SMALL else ""))
ax.legend()
plt.show()
""")
md("""
## 3. Sim-to-real: randomized physics, system identification, the gap

Every environment draws its own pole length and mass at each reset (the bounds are
traced numbers: new bounds do not recompile). A "real" CartPole with a longer,
heavier pole is logged with a random policy; `identify_gradient` recovers its
parameters by gradient descent through the JAX dynamics.
""")
code("""
import gymnax

env, nominal = gymnax.make("CartPole-v1")
ranges = sim2real.param_ranges("CartPole-v1", length=(0.25, 1.0),
                               masspole=sim2real.LogUniform(0.05, 0.2))
dr_env = sim2real.DomainRandomization(env, ranges)
keys = jax.random.split(jax.random.key(2), 4)
obs, state = jax.vmap(dr_env.reset, in_axes=(0, None))(keys, dr_env.default_params)
print("pole length per environment:", np.round(state.physics.length, 3))

real = nominal.replace(length=0.8, masspole=0.25, total_mass=1.25,
                       polemass_length=0.2)

def random_policy(obs, key):
    return jax.random.randint(key, (obs.shape[0],), 0, 2)

log = sim2real.rollout(jax.random.key(3), env, real, random_policy, 4, 40)
fit = sim2real.identify_gradient(
    "CartPole-v1", nominal, ["length", "masspole"], log.obs.reshape(-1, 4),
    log.action.reshape(-1), log.next_obs.reshape(-1, 4), log.valid.reshape(-1),
    num_steps=200)
print("identified [length, masspole]:", np.round(fit.values, 3), "(real: 0.8, 0.25)")

sim_traj = sim2real.rollout(jax.random.key(4), env, nominal, random_policy, 8, 60)
real_traj = sim2real.rollout(jax.random.key(4), env, real, random_policy, 8, 60)
xs, xm = sim2real.visited_states(sim_traj)
ys, ym = sim2real.visited_states(real_traj)
print("return gap (real - sim):", float(sim2real.return_gap(
    sim2real.episode_returns(real_traj), sim2real.episode_returns(sim_traj))))
print("MMD^2 between visited states:", float(sim2real.mmd2(xs, ys, xm, ym)))
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, Path(__file__).with_name("offline.ipynb"))
