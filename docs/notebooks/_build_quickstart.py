"""Build docs/notebooks/quickstart.ipynb from these cells.

python docs/notebooks/_build_quickstart.py
"""

import nbformat as nbf

cells = []


def md(source: str) -> None:
    cells.append(nbf.v4.new_markdown_cell(source.strip()))


def code(source: str) -> None:
    cells.append(nbf.v4.new_code_cell(source.strip()))


md("""
# convergence_jax quickstart

Thompson sampling, genetic algorithms and their combination — the self-evolving
optimizer of *The Convergence* — as pure JAX functions. This notebook runs on a CPU in
about a minute. `SMALL = True` (the default, used by the test suite) keeps every run
short.
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
import jax
import jax.numpy as jnp
import numpy as np

from convergence_jax import bandits, evolution
from convergence_jax.spaces import SearchSpace

SMALL = True  # set False for the full-size runs
print(jax.__version__, jax.devices())
""")
md("""
## 1. Search spaces

Float (linear or log), int and categorical parameters; configs go to arrays and back
exactly.
""")
code("""
space = SearchSpace.from_dict({
    "temperature": {"type": "float", "min": 0.0, "max": 2.0},
    "top_p": {"type": "float", "min": 0.1, "max": 1.0},
    "model": {"type": "categorical", "choices": ["small", "medium", "large"]},
    "max_tokens": {"type": "int", "min": 64, "max": 2048},
})
batch = space.sample(jax.random.key(0), 4)
configs = space.decode(batch)
assert space.decode(space.encode(configs)) == configs
configs
""")
md("""
## 2. Vectorized Thompson sampling

A batch of independent Beta-Bernoulli bandits: `select` draws one posterior sample per
arm, `update` applies many (arm, reward) pairs at once. Here 4,096 bandits play 2,000
rounds of a 10-armed Bernoulli problem inside one `lax.scan`.
""")
code("""
num_bandits, horizon = (512, 500) if SMALL else (4096, 2000)
means = jnp.linspace(0.1, 0.9, 10)
ts = bandits.beta_bernoulli(num_arms=10)
params = ts.default_params

def step(state, key):
    k_select, k_reward, k_update = jax.random.split(key, 3)
    arms = ts.select(k_select, state, params)                      # [num_bandits]
    rewards = jax.random.bernoulli(k_reward, means[arms]).astype(jnp.float32)
    state = ts.update(k_update, state, arms, rewards, params)
    return state, means.max() - means[arms]                        # regret per bandit

@jax.jit
def play(key):
    state = ts.init(params, batch_shape=(num_bandits,))
    return jax.lax.scan(step, state, jax.random.split(key, horizon))

state, regret = play(jax.random.key(1))
cumulative = np.asarray(regret.sum(-1) / num_bandits).cumsum()
print(f"mean cumulative regret after {horizon} rounds: {cumulative[-1]:.1f}")
""")
code("""
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(cumulative)
ax.set(xlabel="round", ylabel="mean cumulative regret", xscale="log")
ax.set_title("Thompson sampling: regret grows like log T")
ax.grid(alpha=0.3)
plt.show()
""")
md("""
## 3. A genetic algorithm over any pytree

`ask` / `tell` like evosax 0.3; `evolution.run` compiles a whole run into one
`lax.scan`. Here the GA minimizes a 10-D Rastrigin function, vmapped over 8 seeds.
""")
code("""
dim, pop, gens = 10, 64, (100 if SMALL else 400)

def rastrigin(x):
    return 10 * x.shape[-1] + jnp.sum(x**2 - 10 * jnp.cos(2 * jnp.pi * x), axis=-1)

ga = evolution.ga(jnp.zeros(dim), population_size=pop, maximize=False)
ga_params = ga.default_params.replace(init_std=jnp.float32(3.0))
run = jax.jit(jax.vmap(lambda key: evolution.run(key, ga, ga_params, rastrigin, gens)))
final_state, metrics = run(jax.random.split(jax.random.key(2), 8))
best_values = np.round(np.asarray(final_state.best_fitness), 2)
print("best Rastrigin value per seed:", best_values)
""")
md("""
## 4. Thompson sampling + evolution

Each generation, Thompson sampling spends a budget of noisy evaluations across the
population (configurations are arms); posterior means are the fitness; elites keep
their posteriors. With a JAX objective the whole run is one compiled program.
""")
code("""
from convergence_jax.optimize import MetricSpec, RewardSpec
from convergence_jax.optimize.objectives import simulated_objective

reward = RewardSpec.build({
    "quality": MetricSpec("quality", "maximize", 0.6, 0.0, 1.0),
    "latency_ms": MetricSpec("latency_ms", "minimize", 0.25, 0.0, 15000.0),
    "cost_usd": MetricSpec("cost_usd", "minimize", 0.15, 0.0, 0.01),
})
noisy = simulated_objective(space)                 # f(key, configs) -> metrics
exact = simulated_objective(space, noisy=False)    # noise-free, to score the result

def objective(key, configs):
    return reward.combine(noisy(key, configs))

me = evolution.mab_evolution(space, population_size=16, evaluations_per_generation=64)
params = me.default_params
generations = 6 if SMALL else 20
run = jax.jit(
    jax.vmap(
        lambda key: evolution.run_mab_evolution(
            key, me, params, objective, generations
        )[1]
    )
)
history = run(jax.random.split(jax.random.key(3), 8))     # 8 seeds in one call
best = jax.vmap(lambda pop, i: jax.tree.map(lambda x: x[-1, i], pop))(
    history["population"], history["best_index"][:, -1])
print("noise-free reward of each seed's best config:",
      np.round(np.asarray(reward.combine(exact(best))), 3), "(optimum 0.768)")
space.decode(jax.tree.map(lambda x: x[:3], best))
""")
md("""
## 5. The command line and `run_optimization`

`convergence-jax optimize examples/quickstart.yaml` runs the same thing from a YAML
file, with a progress bar, and writes `best_config.json`, `detailed_results.json` (every
generation and every evaluation) and `report.md` with a convergence plot. The same
config as a dict:
""")
code("""
from convergence_jax.optimize import config_from_dict, run_optimization

config = config_from_dict({
    "search_space": space.to_dict(),
    "objective": {"type": "simulated_llm"},
    "metrics": {
        "quality": {"goal": "maximize", "weight": 0.6, "min": 0.0, "max": 1.0},
        "latency_ms": {"goal": "minimize", "weight": 0.25, "min": 0.0, "max": 15000.0},
        "cost_usd": {"goal": "minimize", "weight": 0.15, "min": 0.0, "max": 0.01},
    },
    "optimizer": {"generations": 4 if SMALL else 15},
    "output": {"dir": "runs/notebook"},
})
result = run_optimization(config)
print(result.best_config, round(result.best_reward, 4))
""")
code("""
from IPython.display import Image, Markdown, display

display(Image("runs/notebook/convergence.png"))
report = open("runs/notebook/report.md").read()
display(Markdown(report.replace("![convergence](convergence.png)", "")))
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
}
nbf.write(nb, "docs/notebooks/quickstart.ipynb")
