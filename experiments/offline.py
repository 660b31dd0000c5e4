"""Offline RL on a gymnax environment: collect (or load) a dataset, train, evaluate.

    python experiments/offline.py --env CartPole-v1 --kind medium          # collect
    python experiments/offline.py --load DIR/cartpole-medium-v0.hdf5        # D4RL HDF5
    python experiments/offline.py --load path/to/minari/<dataset_id>        # Minari dir
    python experiments/offline.py --kind medium-replay --algo bc --num-seeds 4
    python experiments/offline.py --help                                    # every flag

The dataset comes from ``offline.collect_datasets`` (one PPO run makes the
behaviour policies; see ``docs/offline.md``) or from ``--load``: a D4RL-layout
HDF5 file, or a Minari dataset directory (the one holding ``data/``). It is
written to ``out_dir`` (``dataset.hdf5``, and ``minari/`` with ``--save-minari``)
with ``dataset.json`` (size, returns, reference returns, normalized score).

With ``--algo NAME`` (any key of ``convergence_jax.offline.ALGORITHMS``, e.g.
``bc``) the algorithm trains on the dataset over ``num_seeds`` vmapped seeds in
one compiled program, in chunks of ``eval_every`` gradient steps; after every
chunk each seed's policy is evaluated in the environment for ``eval_episodes``
episodes (``offline.evaluate_policy``). Writes ``metrics.jsonl`` (one line per
chunk per seed: step, return, normalized score, the chunk's mean losses),
``learning_curve.png`` and ``summary.json`` / ``scores.md`` (the final normalized
score per seed, mean and spread). Without ``--algo`` it stops after the dataset.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import numpy as np
import tyro

from convergence_jax.offline import datasets as ds_lib
from convergence_jax.offline.evaluate import evaluate_policy

USAGE = __doc__.split("\n\nThe dataset comes")[0]


@dataclass(frozen=True)
class Config:
    """Collect or load an offline dataset; optionally train and evaluate on it."""

    env: str = "CartPole-v1"
    """gymnax environment id (CartPole-v1, Acrobot-v1, Pendulum-v1 have PPO
    presets for collection)."""
    kind: str = "medium"
    """Dataset to collect: random, medium, medium-replay, expert, medium-expert."""
    load: str | None = None
    """Load this dataset instead of collecting: a D4RL HDF5 file or a Minari
    dataset directory."""
    random_return: float | None = None
    """Reference return of a random policy (normalized score 0), for a loaded
    dataset that lacks one."""
    expert_return: float | None = None
    """Reference return of an expert (normalized score 100), likewise."""
    num_transitions: int = 100_000
    """Collection budget of a random / medium / expert dataset."""
    ppo_total_timesteps: int | None = None
    """Override the PPO preset's budget for the behaviour policy."""
    seed: int = 0
    """Seed of the collection (key(seed)) and of training (fold_in(key(seed), i)
    for seed i of the run)."""
    save_minari: bool = False
    """Also write the dataset in the Minari format under out_dir/minari."""
    algo: str | None = None
    """Offline algorithm to train (a key of convergence_jax.offline.ALGORITHMS);
    None: only collect / load and summarize."""
    algo_config: str = "{}"
    """JSON object of the algorithm config's fields, e.g. '{"batch_size": 512}'."""
    num_steps: int = 10_000
    """Gradient steps per seed."""
    num_seeds: int = 4
    """Seeds, vmapped in one program."""
    eval_every: int = 1_000
    """Gradient steps between evaluations (the learning curve's resolution)."""
    eval_episodes: int = 10
    """Episodes per evaluation per seed."""
    out_dir: str | None = None
    """Output folder; default runs/offline/<env>-<kind>[-<algo>]."""


def get_dataset(config: Config) -> ds_lib.OfflineDataset:
    """The dataset the config names (loaded, or collected)."""
    if config.load is not None:
        path = Path(config.load)
        if path.is_dir():
            return ds_lib.load_minari(
                path, None, config.random_return, config.expert_return
            )
        return ds_lib.load_d4rl_hdf5(
            path,
            env_id=_file_env(path) or config.env,
            random_return=config.random_return,
            expert_return=config.expert_return,
        )
    collect = ds_lib.CollectConfig(num_transitions=config.num_transitions)
    if config.ppo_total_timesteps is not None:
        if config.env not in ds_lib.PPO_PRESETS:
            raise ValueError(
                f"--ppo-total-timesteps: no PPO preset for {config.env!r} "
                f"(presets: {', '.join(ds_lib.PPO_PRESETS)})"
            )
        from dataclasses import replace

        collect = replace(
            collect,
            ppo=replace(
                ds_lib.PPO_PRESETS[config.env],
                total_timesteps=config.ppo_total_timesteps,
            ),
        )
    return ds_lib.collect_dataset(
        jax.random.key(config.seed), config.env, config.kind, collect
    )


def _file_env(path: Path) -> str | None:
    """The env id a file written by ``save_d4rl_hdf5`` records, if any."""
    import h5py

    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        return str(f.attrs["env_id"]) if "env_id" in f.attrs else None


def _check(config: Config) -> None:
    for name in ("num_steps", "num_seeds", "eval_every", "eval_episodes"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")
    if config.num_steps % config.eval_every:
        raise ValueError(
            f"--num-steps ({config.num_steps}) must be a multiple of --eval-every "
            f"({config.eval_every})"
        )
    try:
        overrides = json.loads(config.algo_config)
    except json.JSONDecodeError as err:
        raise ValueError(f"--algo-config: not JSON: {err}") from err
    if not isinstance(overrides, dict):
        raise ValueError("--algo-config: expected a JSON object")
    if config.load is None:
        ds_lib._check_kinds(config.kind)
    if config.algo is not None:
        _registry()[1](config.algo)  # an unknown name fails before collecting


def _registry():
    """``(ALGORITHMS, get_algorithm)``: the package's exports once the
    coordinator adds them, else the registry module."""
    from convergence_jax import offline

    if hasattr(offline, "ALGORITHMS") and hasattr(offline, "get_algorithm"):
        return offline.ALGORITHMS, offline.get_algorithm
    from convergence_jax.offline import registry

    return registry.ALGORITHMS, registry.get_algorithm


def train(config: Config, dataset: ds_lib.OfflineDataset, out: Path) -> dict:
    """Train ``config.algo`` over seeds, evaluating every ``eval_every`` steps."""
    _, get_algorithm = _registry()
    algo = get_algorithm(config.algo)
    obs_dim, spec = _env_spec(dataset.env_id)
    kind = "discrete" if spec.discrete else "continuous"
    if not getattr(algo, kind):
        raise ValueError(f"--algo {config.algo}: does not support {kind} actions")
    overrides = json.loads(config.algo_config)
    fields = set(algo.config.__dataclass_fields__)
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(
            f"--algo-config: {sorted(unknown)} are not fields of "
            f"{algo.config.__name__} ({', '.join(sorted(fields))})"
        )
    if "hidden_sizes" in overrides:
        overrides["hidden_sizes"] = tuple(overrides["hidden_sizes"])
    algo_config = algo.config(**{**overrides, "num_steps": config.num_steps})
    program = algo.make(algo_config, obs_dim, spec)
    data = dataset.transitions
    num_chunks = config.num_steps // config.eval_every

    def evaluate(key, state):
        return evaluate_policy(
            key,
            dataset.env_id,
            lambda obs, k: program.policy(state, obs, k),
            config.eval_episodes,
        )

    # The dataset is an argument (not a constant folded into the program).
    def init(key, data):
        return program.init(key, data, program.default_hparams)

    def chunk(state, key, data):
        state, metrics = program.run(
            state, data, program.default_hparams, config.eval_every
        )
        return state, jax.tree.map(lambda x: x.mean(), metrics), evaluate(key, state)

    init = jax.jit(jax.vmap(init, in_axes=(0, None)))
    chunk = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None)))
    base = jax.random.key(config.seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(np.arange(config.num_seeds))
    k_init, k_eval = jax.vmap(jax.random.split, out_axes=1)(keys)
    start = time.perf_counter()
    states = init(k_init, data)
    rows, returns_per_chunk = [], []
    with open(out / "metrics.jsonl", "w") as f:
        for c in range(num_chunks):
            eval_keys = jax.vmap(jax.random.fold_in, (0, None))(k_eval, c)
            states, metrics, returns = chunk(states, eval_keys, data)
            returns = np.asarray(returns)
            returns_per_chunk.append(returns.mean(1))
            for s in range(config.num_seeds):
                row = {
                    "seed": s,
                    "step": (c + 1) * config.eval_every,
                    "return": float(returns[s].mean()),
                    "normalized_score": _score(dataset, returns[s]),
                    **{k: float(np.asarray(v)[s]) for k, v in metrics.items()},
                }
                rows.append(row)
                f.write(json.dumps(row) + "\n")
    seconds = time.perf_counter() - start
    curve = np.stack(returns_per_chunk)  # [chunks, seeds]
    final = curve[-1]
    scores = [_score(dataset, [r]) for r in final]
    summary = {
        "algo": config.algo,
        "algo_config": _jsonable(asdict(algo_config)),
        "num_seeds": config.num_seeds,
        "num_steps": config.num_steps,
        "seconds": seconds,
        "gradient_steps_per_second": config.num_steps * config.num_seeds / seconds,
        "final_return_per_seed": final.tolist(),
        "final_normalized_score_per_seed": scores,
        "final_normalized_score_mean": None
        if scores[0] is None
        else float(np.mean(scores)),
        "final_normalized_score_std": None
        if scores[0] is None
        else float(np.std(scores)),
    }
    _plot(curve, config, dataset, out / "learning_curve.png")
    return summary


def _env_spec(env_id: str):
    from convergence_jax.offline._common import env_spec

    return env_spec(env_id)


def _score(dataset, returns):
    if dataset.random_return is None or dataset.expert_return is None:
        return None
    return dataset.score(returns)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _plot(curve, config: Config, dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = (np.arange(curve.shape[0]) + 1) * config.eval_every
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, curve.mean(1), color="C0", label=f"{config.algo} (mean)")
    ax.fill_between(steps, curve.min(1), curve.max(1), color="C0", alpha=0.2)
    for value, label, style in (
        (dataset.random_return, "random", ":"),
        (dataset.expert_return, "expert", "--"),
    ):
        if value is not None:
            ax.axhline(value, color="k", ls=style, lw=1, label=label)
    ax.set_title(f"{config.algo} on {dataset.name}: {config.num_seeds} seeds, min-max")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("evaluated return")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(config: Config) -> dict:
    """Run the experiment; returns the summary (also written to out_dir)."""
    _check(config)
    dataset = get_dataset(config)
    name = dataset.name if config.load else f"{config.env}-{config.kind}"
    out = Path(
        config.out_dir
        or Path("runs/offline") / (name + (f"-{config.algo}" if config.algo else ""))
    )
    out.mkdir(parents=True, exist_ok=True)
    ds_lib.save_d4rl_hdf5(dataset, out / "dataset.hdf5")
    if config.save_minari:
        ds_lib.save_minari(dataset, out / "minari", overwrite=True)
    summary = {"config": asdict(config), "dataset": dataset.summary()}
    (out / "dataset.json").write_text(json.dumps(summary["dataset"], indent=2))
    if config.algo is not None:
        summary["training"] = train(config, dataset, out)
        (out / "scores.md").write_text(_scores_md(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _scores_md(summary: dict) -> str:
    d, t = summary["dataset"], summary["training"]
    scores = t["final_normalized_score_per_seed"]
    per_seed = ", ".join("-" if s is None else f"{s:.1f}" for s in scores)
    mean = t["final_normalized_score_mean"]
    return "\n".join(
        [
            f"# {t['algo']} on {d['name']}",
            "",
            "| algorithm | dataset | dataset score | seeds | final score "
            "(mean ± std) | per seed | grad steps / s |",
            "|---|---|---:|---:|---:|---|---:|",
            f"| {t['algo']} | {d['name']} | "
            + ("-" if d["normalized_score"] is None else f"{d['normalized_score']:.1f}")
            + f" | {t['num_seeds']} | "
            + (
                "-"
                if mean is None
                else f"{mean:.1f} ± {t['final_normalized_score_std']:.1f}"
            )
            + f" | {per_seed} | {t['gradient_steps_per_second']:.0f} |",
            "",
        ]
    )


if __name__ == "__main__":
    main(tyro.cli(Config, description=USAGE))
