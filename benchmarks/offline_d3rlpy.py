"""Offline RL vs d3rlpy: normalized score, gradient updates / s and peak memory.

Issue 15's bar: on the same datasets and network sizes, for CQL, IQL, BCQ, BEAR and
BC, the normalized score, the gradient updates per second and the peak memory of
``convergence_jax.offline`` and d3rlpy side by side; goal: at least d3rlpy's score
and at least 10x its updates per second.

**Data.** ``offline.datasets.collect_datasets`` (key 0, 50,000 transitions per
medium / expert collection; the cache of ``benchmarks/offline_learning.py``) makes
Pendulum-v1 and CartPole-v1 *medium-replay*; each is written once to
``benchmarks/results/tmp/offline_d3rlpy/<env>-medium-replay.npz``
(``export_dataset``) and both sides' workers train on that file. d3rlpy gets it as
a ``d3rlpy.dataset.MDPDataset`` built from the arrays (d3rlpy's own datasets
download). d3rlpy keeps one observation sequence per episode and drops the last
step of an episode that ended on a timeout (it has no next observation for it), so
``to_d3rlpy_arrays`` appends every such episode's final next observation as one
extra row (zero action and reward, the timeout flag on it): d3rlpy then sees
exactly our transitions, each with its true next observation.

**Same work.** Both sides: the same hidden sizes (``--hidden``, ReLU MLPs), batch
size (``--batch-size``), Adam with the same step sizes, gamma 0.99, Polyak 0.005,
observations standardized by the dataset's mean and std (+1e-3; d3rlpy's
``StandardObservationScaler`` given our statistics), continuous actions learned in
[-1, 1] (d3rlpy's ``MinMaxActionScaler`` with Pendulum's box [-2, 2]), no reward
scaling, float32, no ``torch.compile`` (d3rlpy's ``compile_graph`` is off by
default). The per-algorithm numbers are in ``ALGORITHMS`` and in the results.
d3rlpy's torch runs ``--torch-threads`` 1 thread: on the shared 2-core machine
its default (one OpenMP thread per core) collapsed under load (CQL 1 update/s
against 48 with one thread in a 3-round check at load ~12); JAX keeps its default.

**Budget.** The defaults (hidden 64-64, batch 256, 2,000 updates x 2 seeds) fit
the 2-core CPU machine shared with other jobs: a first attempt at 256-256 ran
d3rlpy's CQL at ~6 updates / s and ours at ~16 (both compute-bound there), too slow
for scores; 5,000 x 4 seeds at 64-64 did not finish its first algorithm in 20
minutes at load 7-10. Scores after 2,000 updates are early-training scores.

**d3rlpy 2.8.1's algorithms as its code does them** (``d3rlpy/algos/qlearning``),
and where they depart from ours or from the papers:

* BC (``BCConfig``, ``policy_type="deterministic"``): MSE between the tanh
  policy's action and the data action, as ours. ``DiscreteBC``: NLL of a
  categorical policy plus ``beta * mean(logits^2)``; ours has no logit penalty, so
  ``beta=0`` here (d3rlpy's default 0.5).
* CQL (``CQLImpl`` on ``SACImpl``): SAC critics (MSE) plus ``w * (logsumexp -
  Q(s, a_data) - threshold)`` with the importance-sampled logsumexp over N uniform,
  N pi(s) and N pi(s') actions at s, as ours; its weight ``exp(log_alpha)`` is
  learned by default (CQL-Lagrange with ``alpha_threshold`` 10): here
  ``alpha_learning_rate=0`` fixes it at 1, so the term is ``5 * gap`` as ours
  (the constant threshold has no gradient). Its TD target takes the target critics
  at the policy's *mean* action at s' (``soft_q_backup=False``: no entropy, no
  sample); ours samples an action there (no entropy either). Same SAC actor and
  temperature (target entropy -|A|, initial temperature 1).
  ``DiscreteCQL``: double DQN (Huber) plus ``alpha * mean(logsumexp_a Q -
  Q(s, a_data))``, as ours, but its target network is a hard copy every
  ``target_update_interval`` updates where ours is Polyak (tau 0.005): here
  ``target_update_interval = 1 / tau = 200``.
* IQL (``IQLImpl``): expectile 0.7 on ``min Q_target - V``, Q on ``r + gamma V(s')``
  (MSE), AWR actor with ``exp(3 A)`` clipped at 100 and a Gaussian policy with a
  tanh mean and a state-independent std (``use_std_parameter``, log std in [-5,
  2]), as ours; Q and V share one Adam (ours: one each, same step size); critic
  step, then actor step, then targets.
* BCQ (``BCQImpl``): a VAE (latent 2|A| clipped to +-0.5 when sampling, encoder
  log std in [-4, 15], KL weight 0.5); residual actor ``clamp(a_vae + 0.05 *
  tanh(.), -1, 1)``; twin critics on ``max_j [0.75 min + 0.25 max] Q'(s', a_j)``.
  d3rlpy uses ``n_action_samples`` both for that target and for acting (argmax of
  Q_1 over the candidates); ours has a number for each: both 10 here (d3rlpy's
  default 100). d3rlpy's VAE decoder ends *without* a tanh (its ``with_squash``
  flag is inverted since commit 4abdbd3f; its residual policy clamps), ours ends
  with one (the paper). The VAE's hidden sizes are ``--hidden`` on both sides
  (d3rlpy: ``imitator_encoder_factory``; ours: ``vae_hidden_sizes``).
  ``DiscreteBCQ``: double DQN (Huber) plus the imitation NLL plus ``beta *
  mean(logits^2)``, actions allowed where ``log pi_b(a) - max log pi_b > log 0.3``,
  as ours; here ``share_encoder=False`` (ours has two networks), ``beta`` = ours'
  ``logit_reg`` 0.01 and a hard target copy every 200 updates (ours Polyak 0.005).
* BEAR (``BEARImpl``): the VAE and target of BCQ (10 samples), a SAC actor plus
  ``alpha * (MMD - 0.05)`` (laplacian kernel, divisor 2 sigma) with dual ascent on
  ``log alpha`` clamped to [-5, 10], MMD alone during ``warmup_steps``, acting by
  the argmax of Q_1 over ``n_action_samples`` policy samples. It compares the
  VAE's *tanh'd* samples with the policy's *pre-tanh* samples (``with_squash=False``
  decodes with a tanh, see BCQ); ours compares both sides before the tanh (the
  authors). Its alpha optimizer takes the *actor's* step size (moot here: both
  1e-3). Its SAC temperature is switched off as its own D4RL reproduction does
  (``temp_learning_rate=0``, ``initial_temperature=1e-20``); ours has none. MMD
  samples 5, sigma 10 (ours' defaults, the authors') on both sides; warm-up
  ``--bear-warmup`` updates on both sides in the score runs and 0 in the speed runs
  (the steady state after warm-up).

**Speed.** Each (algorithm, side) runs in its own worker process (ours: this venv;
d3rlpy: ``benchmarks/.venvs/d3rlpy``, made by this script with ``torch==2.13.0``
(CPU) and ``d3rlpy==2.8.1``), one seed. After setup (ours: the compile of a
``--speed-updates``-update ``lax.scan``, reported separately; d3rlpy: building the
networks) and one untimed round, ``--rounds`` alternating rounds each run
``--speed-updates`` updates: ours one compiled call of ``program.run`` (sampling
inside), d3rlpy the loop its ``fit`` runs (``sample_transition_batch`` +
``update``, without its logging). Updates / s min / median / max, the 1-minute
load per round.

**Peak memory.** The peak RSS (``VmHWM``) of each worker process (all it ever held: the
library import, the dataset, the networks; JAX's compile for ours), read after the
speed rounds (one seed) and again after the score runs (ours: ``--seeds`` vmapped
seeds; d3rlpy: one seed at a time).

**Score.** ``--num-steps`` updates per seed, ``--seeds`` seeds (ours: one vmapped
call of ``program.train``; d3rlpy: seeds one after another, ``d3rlpy.seed(s)``),
then ``--eval-episodes`` episodes per seed with the deterministic policy
(continuous BCQ / BEAR: their argmax over sampled candidates). Ours is evaluated
in gymnax (``offline.evaluate.evaluate_policy``), d3rlpy in gymnasium's
Pendulum-v1 / CartPole-v1 (the environments gymnax ports, same time limits
200 / 500) through ``algo.predict``. Normalized score with the dataset's reference
returns (random 0, expert 100).

    python benchmarks/offline_d3rlpy.py            # writes results/offline_d3rlpy.*
    python benchmarks/offline_d3rlpy.py --quick    # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VENVS = ROOT / ".venvs"
DATA = RESULTS / "tmp" / "offline_d3rlpy"
NAME = "offline_d3rlpy"
D3RLPY_PACKAGES = ["torch==2.13.0", "d3rlpy==2.8.1"]
FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "timeouts",
)
TAU = 0.005
HARD_TARGET_INTERVAL = round(1 / TAU)

# key: (env, our algorithm, our config overrides, d3rlpy config class, its kwargs).
# Shared by both sides (set in ``configs``): hidden sizes, batch size, gamma.
ALGORITHMS = {
    "bc": (
        "Pendulum-v1",
        "bc",
        {"learning_rate": 3e-4},
        "BCConfig",
        {"learning_rate": 3e-4, "policy_type": "deterministic"},
    ),
    "cql": (
        "Pendulum-v1",
        "cql",
        {
            "actor_lr": 3e-4,
            "critic_lr": 3e-4,
            "alpha_lr": 3e-4,
            "cql_weight": 5.0,
            "num_sampled_actions": 10,
            "tau": TAU,
        },
        "CQLConfig",
        {
            "actor_learning_rate": 3e-4,
            "critic_learning_rate": 3e-4,
            "temp_learning_rate": 3e-4,
            "alpha_learning_rate": 0.0,
            "initial_alpha": 1.0,
            "initial_temperature": 1.0,
            "conservative_weight": 5.0,
            "n_action_samples": 10,
            "tau": TAU,
        },
    ),
    "iql": (
        "Pendulum-v1",
        "iql",
        {
            "actor_lr": 3e-4,
            "critic_lr": 3e-4,
            "value_lr": 3e-4,
            "expectile": 0.7,
            "beta": 3.0,
            "max_weight": 100.0,
            "tau": TAU,
        },
        "IQLConfig",
        {
            "actor_learning_rate": 3e-4,
            "critic_learning_rate": 3e-4,
            "expectile": 0.7,
            "weight_temp": 3.0,
            "max_weight": 100.0,
            "tau": TAU,
        },
    ),
    "bcq": (
        "Pendulum-v1",
        "bcq",
        {
            "learning_rate": 1e-3,
            "actor_learning_rate": 1e-3,
            "vae_learning_rate": 1e-3,
            "num_target_samples": 10,
            "num_action_samples": 10,
            "lam": 0.75,
            "action_flexibility": 0.05,
            "kl_weight": 0.5,
            "tau": TAU,
        },
        "BCQConfig",
        {
            "actor_learning_rate": 1e-3,
            "critic_learning_rate": 1e-3,
            "imitator_learning_rate": 1e-3,
            "n_action_samples": 10,
            "lam": 0.75,
            "action_flexibility": 0.05,
            "beta": 0.5,
            "tau": TAU,
        },
    ),
    "bear": (
        "Pendulum-v1",
        "bear",
        {
            "actor_learning_rate": 1e-3,
            "learning_rate": 1e-3,
            "vae_learning_rate": 1e-3,
            "alpha_learning_rate": 1e-3,
            "kernel": "laplacian",
            "num_mmd_samples": 5,
            "mmd_sigma": 10.0,
            "num_target_samples": 10,
            "num_action_samples": 10,
            "alpha_threshold": 0.05,
            "lam": 0.75,
            "kl_weight": 0.5,
            "tau": TAU,
        },
        "BEARConfig",
        {
            "actor_learning_rate": 1e-3,
            "critic_learning_rate": 1e-3,
            "imitator_learning_rate": 1e-3,
            "alpha_learning_rate": 1e-3,
            "temp_learning_rate": 0.0,
            "initial_temperature": 1e-20,
            "mmd_kernel": "laplacian",
            "n_mmd_action_samples": 5,
            "mmd_sigma": 10.0,
            "n_target_samples": 10,
            "n_action_samples": 10,
            "alpha_threshold": 0.05,
            "lam": 0.75,
            "vae_kl_weight": 0.5,
            "tau": TAU,
        },
    ),
    "discrete_bc": (
        "CartPole-v1",
        "bc",
        {"learning_rate": 3e-4},
        "DiscreteBCConfig",
        {"learning_rate": 3e-4, "beta": 0.0},
    ),
    "discrete_cql": (
        "CartPole-v1",
        "cql",
        {"critic_lr": 3e-4, "cql_weight": 1.0, "tau": TAU},
        "DiscreteCQLConfig",
        {
            "learning_rate": 3e-4,
            "alpha": 1.0,
            "n_critics": 1,
            "target_update_interval": HARD_TARGET_INTERVAL,
        },
    ),
    "discrete_bcq": (
        "CartPole-v1",
        "bcq",
        {"learning_rate": 1e-3, "threshold": 0.3, "logit_reg": 1e-2, "tau": TAU},
        "DiscreteBCQConfig",
        {
            "learning_rate": 1e-3,
            "action_flexibility": 0.3,
            "beta": 1e-2,
            "share_encoder": False,
            "n_critics": 1,
            "target_update_interval": HARD_TARGET_INTERVAL,
        },
    ),
}
VAE_ALGORITHMS = ("bcq", "bear")


def _load() -> float:
    return os.getloadavg()[0]


def peak_rss_mb() -> float:
    """This process's peak resident set in MiB: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries it across ``fork`` + ``exec``, so a worker
    would report at least its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------- data


def export_dataset(transitions, random_return, expert_return, path) -> Path:
    """Write one dataset (a ``Transitions`` or a dict of its fields) and its
    reference returns to ``path`` (npz), the file both sides' workers load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    get = (
        transitions.get
        if isinstance(transitions, dict)
        else transitions.__getattribute__
    )
    arrays = {f: np.asarray(get(f)) for f in FIELDS}
    np.savez(
        path,
        **arrays,
        random_return=np.float64(random_return),
        expert_return=np.float64(expert_return),
    )
    return path


def load_dataset(path) -> dict:
    with np.load(path) as f:
        out = {k: f[k] for k in f.files}
    out["random_return"] = float(out["random_return"])
    out["expert_return"] = float(out["expert_return"])
    return out


def to_d3rlpy_arrays(data: dict) -> dict:
    """The arrays of ``d3rlpy.dataset.MDPDataset`` holding exactly ``data``'s
    transitions.

    d3rlpy stores one observation sequence per episode: a transition's next
    observation is the following row's observation, and the last row of an
    episode that ended on a timeout is dropped (its next observation is unknown).
    So each episode must continue its observations row to row (checked), and an
    episode that ends on a timeout gets one extra row: its final next observation,
    a zero action and reward, and the timeout flag (moved from the last real row).
    A terminal episode ends as it is (d3rlpy does not bootstrap there, and nor do
    we). Every row must belong to a complete episode.
    """
    obs, next_obs = data["observations"], data["next_observations"]
    actions, rewards = data["actions"], data["rewards"]
    terminals = np.asarray(data["terminals"], bool)
    timeouts = np.asarray(data["timeouts"], bool) & ~terminals
    ends = np.flatnonzero(terminals | timeouts)
    n = len(rewards)
    if n == 0 or ends.size == 0 or ends[-1] != n - 1:
        raise ValueError("to_d3rlpy_arrays: the last row must end an episode")
    out = {k: [] for k in ("observations", "actions", "rewards", "terminals")}
    out["timeouts"] = []
    start = 0
    for end in ends:
        sl = slice(start, end + 1)
        if end > start and not np.array_equal(
            obs[start + 1 : end + 1], next_obs[start:end]
        ):
            raise ValueError(
                f"to_d3rlpy_arrays: rows {start}..{end} are not one episode "
                "(next_observations do not continue observations)"
            )
        length = end + 1 - start
        term = np.zeros(length, np.float32)
        tout = np.zeros(length, np.float32)
        out["observations"].append(obs[sl])
        out["actions"].append(actions[sl])
        out["rewards"].append(rewards[sl].astype(np.float32))
        if terminals[end]:
            term[-1] = 1.0
            out["terminals"].append(term)
            out["timeouts"].append(tout)
        else:
            out["observations"].append(next_obs[end : end + 1])
            out["actions"].append(np.zeros_like(actions[end : end + 1]))
            out["rewards"].append(np.zeros(1, np.float32))
            out["terminals"].append(np.zeros(length + 1, np.float32))
            tout = np.zeros(length + 1, np.float32)
            tout[-1] = 1.0
            out["timeouts"].append(tout)
        start = end + 1
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    arrays["observations"] = arrays["observations"].astype(np.float32)
    arrays["rewards"] = arrays["rewards"][:, None]
    return arrays


def obs_stats(data: dict):
    """Our ``obs_norm_from_data`` statistics (std without the 1e-3, which d3rlpy's
    scaler adds as its ``eps``)."""
    o = np.asarray(data["observations"], np.float32)
    return o.mean(0), o.std(0)


def prepare_datasets(args) -> dict:
    """``{env_id: npz path}``: medium-replay of each environment, exported once."""
    sys.path.insert(0, str(ROOT))
    from offline_learning import datasets_for

    paths = {}
    for env_id in sorted({ALGORITHMS[a][0] for a in args.algorithms}):
        path = DATA / f"{env_id}-medium-replay-{args.num_transitions}.npz"
        if not path.exists() or args.refresh:
            ds = datasets_for(env_id, args.num_transitions, args.refresh)[
                "medium-replay"
            ]
            export_dataset(
                ds["transitions"], ds["random_return"], ds["expert_return"], path
            )
        paths[env_id] = str(path)
    return paths


# --------------------------------------------------------------------- workers


def configs(key: str, spec: dict):
    """``(env_id, our algorithm, our overrides, d3rlpy class, d3rlpy kwargs)`` with
    the shared sizes filled in (``spec``: hidden, batch_size, num_steps, warmup)."""
    env_id, ours, ours_kw, d3_cls, d3_kw = ALGORITHMS[key]
    ours_kw = dict(ours_kw)
    ours_kw.update(
        hidden_sizes=tuple(spec["hidden"]),
        batch_size=spec["batch_size"],
        num_steps=spec["num_steps"],
        gamma=0.99,
    )
    d3_kw = dict(d3_kw, batch_size=spec["batch_size"], gamma=0.99)
    if key in VAE_ALGORITHMS:
        ours_kw["vae_hidden_sizes"] = tuple(spec["hidden"])
    if key == "bear":
        ours_kw["warmup_steps"] = spec["bear_warmup"]
        d3_kw["warmup_steps"] = spec["bear_warmup"]
    if ours == "bc":  # no discount in BC
        ours_kw.pop("gamma")
        d3_kw.pop("gamma")
    return env_id, ours, ours_kw, d3_cls, d3_kw


class OursWorker:
    def __init__(self, key, spec):
        import jax
        import jax.numpy as jnp

        from convergence_jax.offline import registry
        from convergence_jax.offline._common import env_spec
        from convergence_jax.offline.dataset import Transitions

        self.jax = jax
        self.env_id, ours, self.kw, _, _ = configs(key, spec)
        raw = load_dataset(spec["dataset"])
        self.ref = raw["random_return"], raw["expert_return"]
        obs_dim, self.spec = env_spec(self.env_id)
        fields = {f: jnp.asarray(raw[f]) for f in FIELDS}
        fields["terminals"] = fields["terminals"].astype(bool)
        fields["timeouts"] = fields["timeouts"].astype(bool)
        self.data = Transitions(**fields)
        self.registry, self.ours, self.obs_dim = registry, ours, obs_dim

    def program(self, **override):
        kw = dict(self.kw, **override)
        return self.registry.make_algorithm(self.ours, self.obs_dim, self.spec, **kw)

    def setup_speed(self, updates):
        jax = self.jax
        extra = {"warmup_steps": 0} if self.ours == "bear" else {}
        program = self.program(**extra)
        start = time.perf_counter()
        state = jax.jit(program.init)(jax.random.key(0), self.data)
        run = jax.jit(lambda s, d: program.run(s, d, None, updates)[0])
        self.run = run.lower(state, self.data).compile()
        seconds = time.perf_counter() - start
        self.state = jax.block_until_ready(self.run(state, self.data))  # untimed
        return {"setup_seconds": seconds}

    def speed_round(self):
        start, cpu = time.perf_counter(), time.process_time()
        self.state = self.jax.block_until_ready(self.run(self.state, self.data))
        return {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }

    def score(self, seeds, episodes):
        import functools

        from convergence_jax.offline.evaluate import evaluate_policy

        jax = self.jax
        program = self.program()
        keys = jax.random.split(jax.random.key(0), seeds)
        train = jax.jit(jax.vmap(lambda k, d: program.train(k, d)[0], (0, None)))

        @jax.jit
        def evaluate(states, key):
            def one(state, k):
                act = functools.partial(program.policy, state)
                return evaluate_policy(k, self.env_id, act, episodes)

            return jax.vmap(one)(states, jax.random.split(key, seeds))

        start = time.perf_counter()
        compiled = train.lower(keys, self.data).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        states = jax.block_until_ready(compiled(keys, self.data))
        train_s = time.perf_counter() - start
        returns = np.asarray(evaluate(states, jax.random.key(10_000)))
        return {
            "returns": returns.tolist(),
            "compile_seconds": compile_s,
            "train_seconds": train_s,
        }


class D3rlpyWorker:
    def __init__(self, key, spec):
        import d3rlpy
        import torch
        from d3rlpy.dataset import MDPDataset
        from d3rlpy.models.encoders import VectorEncoderFactory
        from d3rlpy.preprocessing import MinMaxActionScaler, StandardObservationScaler

        self.d3rlpy, self.torch, self.key, self.spec = d3rlpy, torch, key, spec
        if spec.get("torch_threads"):
            torch.set_num_threads(spec["torch_threads"])
        self.env_id, _, _, self.cls_name, self.kw = configs(key, spec)
        raw = load_dataset(spec["dataset"])
        self.ref = raw["random_return"], raw["expert_return"]
        discrete = key.startswith("discrete")
        arrays = to_d3rlpy_arrays(raw)
        if discrete:
            arrays["actions"] = arrays["actions"].astype(np.int64)
        self.dataset = MDPDataset(
            **arrays,
            action_space=(
                d3rlpy.ActionSpace.DISCRETE
                if discrete
                else d3rlpy.ActionSpace.CONTINUOUS
            ),
        )
        if self.dataset.transition_count != len(raw["rewards"]):
            raise RuntimeError(
                f"d3rlpy sees {self.dataset.transition_count} transitions, the "
                f"file holds {len(raw['rewards'])}"
            )
        mean, std = obs_stats(raw)
        encoder = VectorEncoderFactory(hidden_units=list(spec["hidden"]))
        kw = dict(
            self.kw, observation_scaler=StandardObservationScaler(mean=mean, std=std)
        )
        if not discrete:
            kw["action_scaler"] = MinMaxActionScaler(
                minimum=np.full(1, -2.0, np.float32),
                maximum=np.full(1, 2.0, np.float32),
            )
        fields = getattr(d3rlpy.algos, self.cls_name).__dataclass_fields__
        for name in (
            "encoder_factory",
            "actor_encoder_factory",
            "critic_encoder_factory",
            "value_encoder_factory",
            "imitator_encoder_factory",
        ):
            if name in fields:
                kw[name] = encoder
        self.base_kw = kw

    def make(self, seed, **override):
        self.d3rlpy.seed(seed)
        cls = getattr(self.d3rlpy.algos, self.cls_name)
        algo = cls(**dict(self.base_kw, **override)).create(device="cpu:0")
        algo.build_with_dataset(self.dataset)
        return algo

    def updates(self, algo, n):
        batch_size = self.kw["batch_size"]
        for _ in range(n):
            algo.update(self.dataset.sample_transition_batch(batch_size))

    def setup_speed(self, updates):
        extra = {"warmup_steps": 0} if self.key == "bear" else {}
        start = time.perf_counter()
        self.algo = self.make(0, **extra)
        seconds = time.perf_counter() - start
        self.n = updates
        self.updates(self.algo, updates)  # untimed
        return {"setup_seconds": seconds}

    def speed_round(self):
        start, cpu = time.perf_counter(), time.process_time()
        self.updates(self.algo, self.n)
        return {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }

    def evaluate(self, algo, seed, episodes):
        import gymnasium

        envs = [gymnasium.make(self.env_id) for _ in range(episodes)]
        obs = np.stack(
            [env.reset(seed=10_000 * seed + i)[0] for i, env in enumerate(envs)]
        )
        returns = np.zeros(episodes)
        live = np.ones(episodes, bool)
        while live.any():
            idx = np.flatnonzero(live)
            actions = algo.predict(obs[idx].astype(np.float32))
            for j, i in enumerate(idx):
                o, r, term, trunc, _ = envs[i].step(actions[j])
                obs[i] = o
                returns[i] += r
                live[i] = not (term or trunc)
        return returns

    def score(self, seeds, episodes):
        returns, train_s = [], 0.0
        for seed in range(seeds):
            algo = self.make(seed)
            start = time.perf_counter()
            self.updates(algo, self.spec["num_steps"])
            train_s += time.perf_counter() - start
            returns.append(self.evaluate(algo, seed, episodes).tolist())
        return {"returns": returns, "compile_seconds": 0.0, "train_seconds": train_s}


def worker_main(kind, key, spec):
    out = sys.stdout
    sys.stdout = sys.stderr
    from importlib.metadata import version

    worker = {"ours": OursWorker, "d3rlpy": D3rlpyWorker}[kind](key, spec)
    packages = ("jax", "jaxlib", "flax", "optax", "gymnax")
    if kind == "d3rlpy":
        packages = ("d3rlpy", "torch", "gymnasium", "numpy")
    info = {p: version(p) for p in packages}
    if kind == "d3rlpy":
        info["torch_threads"] = worker.torch.get_num_threads()
    print(json.dumps(info), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "setup_speed":
            reply = worker.setup_speed(cmd["updates"])
        elif op == "speed_round":
            reply = worker.speed_round()
        elif op == "score":
            reply = worker.score(cmd["seeds"], cmd["episodes"])
        elif op == "rss":
            reply = {"peak_rss_mb": peak_rss_mb()}
        else:
            break
        print(json.dumps(reply), file=out, flush=True)


def d3rlpy_python(args) -> str:
    if args.d3rlpy_python:
        return args.d3rlpy_python
    venv = VENVS / "d3rlpy"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *D3RLPY_PACKAGES], check=True
        )
    return str(python)


# --------------------------------------------------------------------- driver


def compare(key, args, dataset):
    from _timing import alternate, speedup
    from _worker import JsonWorker, summarize, worker_env

    from convergence_jax.offline.evaluate import normalized_score

    spec = {
        "dataset": dataset,
        "hidden": list(args.hidden),
        "batch_size": args.batch_size,
        "num_steps": args.num_steps,
        "bear_warmup": args.bear_warmup,
        "torch_threads": args.torch_threads,
    }
    script = str(Path(__file__).resolve())
    argv = ["--worker-key", key, "--spec", json.dumps(spec)]
    env = worker_env(JAX_PLATFORMS="cpu")
    workers = {
        "ours": JsonWorker([sys.executable, script, "--worker", "ours", *argv], env),
        "d3rlpy": JsonWorker(
            [d3rlpy_python(args), script, "--worker", "d3rlpy", *argv], env
        ),
    }
    try:
        setup = {
            n: w.ask(op="setup_speed", updates=args.speed_updates)
            for n, w in workers.items()
        }
        timing = None
        if args.rounds > 0:
            timing = alternate(
                {
                    n: (lambda r, w=w: w.ask(op="speed_round"))
                    for n, w in workers.items()
                },
                args.rounds,
            )
        rss_speed = {n: w.ask(op="rss")["peak_rss_mb"] for n, w in workers.items()}
        scores = {}
        if args.seeds > 0:
            for n, w in workers.items():
                scores[n] = w.ask(
                    op="score", seeds=args.seeds, episodes=args.eval_episodes
                )
        rss_score = {n: w.ask(op="rss")["peak_rss_mb"] for n, w in workers.items()}
        versions = {n: w.info for n, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    raw = load_dataset(dataset)
    rr, er = raw["random_return"], raw["expert_return"]
    rates = timing and {
        n: summarize([args.speed_updates / s for s in timing["seconds"][n]["values"]])
        for n in workers
    }
    result = {
        "key": key,
        "num_steps": args.num_steps,
        "seeds": args.seeds,
        "eval_episodes": args.eval_episodes,
        "env_id": ALGORITHMS[key][0],
        "ours_algorithm": ALGORITHMS[key][1],
        "d3rlpy_config": ALGORITHMS[key][3],
        "ours_overrides": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in configs(key, spec)[2].items()
        },
        "d3rlpy_kwargs": configs(key, spec)[4],
        "setup": setup,
        "timing": timing,
        "updates_per_second": rates,
        "ours_vs_d3rlpy": timing and speedup(timing, "ours", "d3rlpy"),
        "peak_rss_mb_after_speed": rss_speed,
        "peak_rss_mb_after_score": rss_score,
        "versions": versions,
    }
    for n, s in scores.items():
        per_seed = [normalized_score(np.asarray(r), rr, er) for r in s["returns"]]
        result.setdefault("score", {})[n] = {
            **s,
            "per_seed": per_seed,
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
            "updates_per_second_score_run": args.num_steps
            * args.seeds
            / s["train_seconds"],
        }
    return result


def _spread(s, fmt="{:,.0f}"):
    if s is None:
        return "-"
    return " / ".join(fmt.format(s[k]) for k in ("min", "median", "max"))


def cpu_per_update(run, updates) -> str:
    """Median CPU milliseconds per update of each side over the timed rounds
    (process time: JAX's threads summed, d3rlpy's one torch thread) and their
    ratio d3rlpy / ours: the work each side spends per update, whatever share of
    the shared machine it got (wall time is what the ratio column compares)."""
    rounds = (run.get("timing") or {}).get("rounds") or []
    if not rounds or "ours_cpu" not in rounds[0]:
        return "-"
    ms = {
        n: 1e3 * float(np.median([q[f"{n}_cpu"] for q in rounds])) / updates
        for n in ("ours", "d3rlpy")
    }
    return f"{ms['ours']:.1f} / {ms['d3rlpy']:.1f} ({ms['d3rlpy'] / ms['ours']:.1f}x)"


def markdown(result) -> str:
    a, m = result["args"], result["machine"]
    lines = [
        "# Offline RL vs d3rlpy: score, updates / s, peak memory",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU only (JAX on CPU; torch "
        f"{result['versions'].get('torch', '?')} CPU, "
        f"{result['versions'].get('torch_threads', '?')} threads). 1-minute load "
        f"{result['load_before']:.1f} at start, {result['load_after']:.1f} at end "
        "(a shared machine; per-round loads are in the .json).",
        "",
        f"Datasets: medium-replay of Pendulum-v1 (continuous) and CartPole-v1 "
        f"(discrete), collected here (`offline.collect_datasets`, key 0), one npz "
        "file each that both sides load (d3rlpy as an `MDPDataset` from the "
        "arrays). Both sides: hidden "
        f"{'-'.join(map(str, a['hidden']))} ReLU, batch {a['batch_size']}, the same "
        "Adam step sizes and key numbers (see the script's docstring and "
        "`ALGORITHMS`; what differs is listed there).",
        "",
        "Score: the updates per seed and the seeds of each row (ours "
        "vmapped, d3rlpy one after another), then "
        f"{a['eval_episodes']} evaluation episodes per seed; normalized score "
        "(random 0, expert 100), mean ± std over seeds "
        f"(BEAR warm-up {a['bear_warmup']:,} updates on both sides). Speed: one "
        f"seed, {a['rounds']} alternating rounds of {a['speed_updates']} updates "
        "each after an untimed one (BEAR past its warm-up); updates / s min / "
        "median / max. Ratio: ours / d3rlpy of the median time per round, its "
        "range (one's min over the other's max), and the verdict. CPU ms / "
        "update: median process time per update over the rounds (JAX's threads "
        "summed, torch's one) and d3rlpy's over ours, the work per update "
        "whatever share of the loaded machine each side got. Peak memory: "
        "peak RSS (`VmHWM`) of each side's worker process after the speed rounds (one "
        "seed) / after the score runs.",
        "",
        "| algorithm | env | updates x seeds | ours score | d3rlpy score | "
        "ours updates/s "
        "min / med / max | d3rlpy updates/s min / med / max | ratio (range) | "
        "CPU ms / update ours / d3rlpy (ratio) | ours peak MB | d3rlpy peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if result.get("parts"):
        runs = [
            f"{', '.join(q['args']['algorithms'])} ("
            + ("speed" if q["args"]["rounds"] else "")
            + (" + " if q["args"]["rounds"] and q["args"]["seeds"] else "")
            + ("score" if q["args"]["seeds"] else "")
            + f", load {q['load_before']:.1f} -> {q['load_after']:.1f})"
            for q in result["parts"]
        ]
        lines[-2:-2] = [
            "Runs merged here (later ones replace earlier rows' speed or score "
            "fields): " + "; ".join(runs) + ".",
            "",
        ]
    for r in result["runs"]:
        ups = r["updates_per_second"]
        sc = r.get("score", {})

        def score(n, sc=sc):
            if n not in sc:
                return "-"
            return f"{sc[n]['mean']:.1f} ± {sc[n]['std']:.1f}"

        s = r["ours_vs_d3rlpy"]
        if s is None:
            ratio, ups = "-", {n: None for n in ("ours", "d3rlpy")}
        else:
            ratio = (
                f"{s['of_medians']:.1f}x ({s['range'][0]:.1f} .. {s['range'][1]:.1f})"
            )
            if s["verdict"] == "tie":
                ratio += " tie"
        mem = {
            n: f"{r['peak_rss_mb_after_speed'][n]:.0f} / "
            f"{r['peak_rss_mb_after_score'][n]:.0f}"
            for n in ("ours", "d3rlpy")
        }
        lines.append(
            f"| {r['key']} ({r['d3rlpy_config'].removesuffix('Config')}) | "
            f"{r['env_id']} | "
            + (f"{r['num_steps']:,} x {r['seeds']}" if sc else "not run")
            + f" | {score('ours')} | {score('d3rlpy')} | "
            f"{_spread(ups['ours'])} | {_spread(ups['d3rlpy'])} | {ratio} | "
            f"{cpu_per_update(r, a['speed_updates'])} | "
            f"{mem['ours']} | {mem['d3rlpy']} |"
        )
    lines += ["", "## Per seed and the score runs", ""]
    lines += [
        "| algorithm | ours per seed | d3rlpy per seed | ours train s (all seeds, "
        "updates/s) | d3rlpy train s (updates/s) | ours compile s (speed / score) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in result["runs"]:
        sc = r.get("score")
        if not sc:
            continue
        o, d = sc["ours"], sc["d3rlpy"]
        lines.append(
            f"| {r['key']} | {', '.join(f'{x:.1f}' for x in o['per_seed'])} | "
            f"{', '.join(f'{x:.1f}' for x in d['per_seed'])} | "
            f"{o['train_seconds']:.1f} ({o['updates_per_second_score_run']:,.0f}) | "
            f"{d['train_seconds']:.1f} ({d['updates_per_second_score_run']:,.0f}) | "
            f"{r['setup']['ours']['setup_seconds']:.1f} / {o['compile_seconds']:.1f} |"
        )
    missing = [r["key"] for r in result["runs"] if not r.get("score")]
    if missing:
        lines += [
            "",
            f"**Not scored: {', '.join(missing)}.** The score runs did not fit the "
            "time these runs had on the shared machine (the lock for heavy runs, "
            "2 cores); their speed and memory rows stand.",
        ]
    lines += ["", "## Bar (issue 15): score >= d3rlpy's and >= 10x its updates/s", ""]
    lines += [f"- {line}" for line in result["bar"]]
    return "\n".join(lines) + "\n"


def bar_lines(result) -> list[str]:
    out = []
    for r in result["runs"]:
        s = r["ours_vs_d3rlpy"] or {"of_medians": float("nan"), "range": [0, 0]}
        speed = (
            f"{s['of_medians']:.1f}x d3rlpy's updates/s (range {s['range'][0]:.1f} .. "
            f"{s['range'][1]:.1f}x): "
            + (
                "meets 10x"
                if s["range"][0] >= 10
                else "median meets 10x, range does not"
                if s["of_medians"] >= 10
                else "BELOW 10x"
            )
        )
        sc = r.get("score")
        if sc:
            o, d = np.array(sc["ours"]["per_seed"]), np.array(sc["d3rlpy"]["per_seed"])
            if o.mean() >= d.mean():
                verdict = "at least d3rlpy's"
                if o.min() <= d.max() and o.mean() - d.mean() < o.std() + d.std():
                    verdict += " (within the seeds' spread)"
            else:
                verdict = "BELOW d3rlpy's"
                if o.max() >= d.min():
                    verdict += " (the per-seed ranges overlap)"
            score = f"score {o.mean():.1f} vs {d.mean():.1f}, {verdict}"
        else:
            score = "score not run"
        out.append(f"{r['key']}: {score}; {speed}")
    return out


def merge_runs(runs) -> list[dict]:
    """One run per algorithm: the speed fields (timing, rates, ratio, setup, peak
    RSS after speed) from the part that timed it, the score fields from the part
    that scored it."""
    speed_keys = (
        "timing",
        "updates_per_second",
        "ours_vs_d3rlpy",
        "setup",
        "peak_rss_mb_after_speed",
    )
    score_keys = ("score", "num_steps", "seeds", "eval_episodes")
    by_key: dict[str, dict] = {}
    for r in runs:
        have = by_key.setdefault(r["key"], {})
        for k, v in r.items():
            if k in speed_keys:
                if r.get("timing") is not None or k not in have:
                    have[k] = v
            elif k in score_keys or k == "peak_rss_mb_after_score":
                if "score" in r or k not in have:
                    have[k] = v
            elif k == "versions":
                have.setdefault("versions", v)
                if "score" in r:
                    have["score_versions"] = v
            else:
                have.setdefault(k, v)
    return [by_key[k] for k in ALGORITHMS if k in by_key]


def main(args):
    from _machine import machine_info

    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        result = dict(parts[0])
        result["parts"] = [
            # a part that is itself a merge brings its own parts
            sub
            for q in parts
            for sub in q.get("parts")
            or [
                {
                    "args": q["args"],
                    "load_before": q["load_before"],
                    "load_after": q["load_after"],
                }
            ]
        ]
        result["runs"] = merge_runs([r for q in parts for r in q["runs"]])
        for q in parts:
            result["datasets"].update(q["datasets"])
            result.setdefault("versions", {}).update(q.get("versions", {}))
        result["load_before"] = parts[0]["load_before"]
        result["load_after"] = parts[-1]["load_after"]
        result["bar"] = bar_lines(result)
        out = Path(args.out) if args.out else RESULTS / NAME
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {out}.json / .md")
        return result
    if args.markdown_from is not None:
        result = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(result))
        return result
    result = {
        "name": NAME,
        "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        "machine": machine_info(),
        "load_before": _load(),
        "runs": [],
    }
    paths = prepare_datasets(args)
    result["datasets"] = {}
    for env_id, path in paths.items():
        raw = load_dataset(path)
        result["datasets"][env_id] = {
            "file": str(Path(path).relative_to(ROOT.parent)),
            "transitions": int(len(raw["rewards"])),
            "random_return": raw["random_return"],
            "expert_return": raw["expert_return"],
        }
    out = Path(args.out) if args.out else RESULTS / NAME
    started = time.perf_counter()
    for key in args.algorithms:
        if args.stop_after and time.perf_counter() - started > args.stop_after:
            result.setdefault("skipped", []).append(key)
            print(f"{key}: skipped (--stop-after {args.stop_after} s)", flush=True)
            continue
        t0 = time.perf_counter()
        run = compare(key, args, paths[ALGORITHMS[key][0]])
        result["runs"].append(run)
        zero = {"median": 0.0, "of_medians": 0.0}
        ups = run["updates_per_second"] or {"ours": zero, "d3rlpy": zero}
        sc = run.get("score", {})
        ratio = (run["ours_vs_d3rlpy"] or zero)["of_medians"]
        print(
            f"{key:13s} ours {ups['ours']['median']:8.0f}/s d3rlpy "
            f"{ups['d3rlpy']['median']:6.0f}/s ratio "
            f"{ratio:5.1f}x "
            + " ".join(
                f"{n} score {v['mean']:.1f}±{v['std']:.1f}" for n, v in sc.items()
            )
            + f" rss {run['peak_rss_mb_after_score']}"
            f" ({time.perf_counter() - t0:.0f} s, load {_load():.1f})",
            flush=True,
        )
        if run["versions"].get("d3rlpy"):
            result["versions"] = {
                **run["versions"]["ours"],
                **run["versions"]["d3rlpy"],
            }
        if not args.quick:  # a partial result survives a stop
            result["load_after"] = _load()
            out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    result["load_after"] = _load()
    result["bar"] = bar_lines(result)
    print("\n".join(result["bar"]))
    if not args.quick:
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {out}.json / .md")
    return result


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS)
    )
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--num-steps", type=int, default=2_000, help="updates per seed (score)"
    )
    p.add_argument("--seeds", type=int, default=2, help="0: skip the score runs")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--bear-warmup", type=int, default=400)
    p.add_argument("--speed-updates", type=int, default=100, help="updates per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="d3rlpy's torch.set_num_threads (0: torch's default, one per core)",
    )
    p.add_argument("--num-transitions", type=int, default=50_000)
    p.add_argument("--refresh", action="store_true", help="recollect the datasets")
    p.add_argument("--d3rlpy-python", default=None, help="a python with d3rlpy")
    p.add_argument("--out", default=None, help="results path without suffix")
    p.add_argument("--quick", action="store_true", help="smoke test; writes nothing")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        help="start no further algorithm after this many seconds",
    )
    p.add_argument("--merge", nargs="+", help="results .json files of parts: one table")
    p.add_argument("--markdown-from", type=Path, help="rewrite the .md from a .json")
    p.add_argument("--worker", choices=("ours", "d3rlpy"), help=argparse.SUPPRESS)
    p.add_argument("--worker-key", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.num_steps, args.seeds, args.eval_episodes = 50, 2, 2
        args.hidden, args.speed_updates, args.rounds = [32], 20, 3
        args.bear_warmup = 10
    return args


if __name__ == "__main__":
    _args = parse()
    if _args.worker:
        worker_main(_args.worker, _args.worker_key, json.loads(_args.spec))
    else:
        sys.path.insert(0, str(ROOT))
        main(_args)
