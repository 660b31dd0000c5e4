"""DQN on CartPole-v1: convergence_jax.rl vs rejax, side by side.

Both train the same DQN (rejax's own CartPole-v1 DQN configuration,
configs/gymnax/cartpole.yaml in its repository): 10 environments, one step of
each then 5 gradient steps on minibatches of 100 per iteration, a 50,000-step
replay buffer filled with 5,000 uniform-action steps first, double DQN with a
dueling 64-64 swish head, Adam at 1e-3, gamma 0.99, a Polyak target
(target <- 0.98 target + 0.02 online after every iteration), epsilon 1 -> 0.05
linearly over the first half of 100,000 environment steps, gradient clip 10.

* Learning: one call of our training program vmapped over 8 seeds, on that
  configuration and with n_step=3; every seed's final policy is evaluated on 128
  greedy episodes. rejax's learning shows in its timed single runs below (one
  seed per round, its own evaluation callback, 128 episodes, epsilon 0.005).
  The bar: final return >= 475 in at least 7 of 8 seeds. Ours also reports the
  mean return of the training episodes (epsilon 0.05) that ended in the last
  10,000 steps, and its curves go to a .png.
* Speed: environment steps per second of one whole training run, steady state
  (compiled, one untimed call), in alternated rounds (the order rotated every
  round, the 1-minute load recorded), each library in its own worker process.
  Compile time is reported separately.

rejax 0.1.3 needs gymnax 0.0.9 and runs in ``benchmarks/.venvs/rejax`` (created
as ``benchmarks/ppo_cartpole.py`` does, unless given with --rejax-python).

    python benchmarks/dqn_cartpole.py            # full run, writes results/
    python benchmarks/dqn_cartpole.py --quick    # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _machine import machine_info
from _timing import alternate, speedup
from _worker import JsonWorker, summarize, worker_env

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
NAME = "dqn_cartpole"

# rejax's configs/gymnax/cartpole.yaml, dqn section; each worker maps it.
CONFIG = {
    "env_id": "CartPole-v1",
    "num_envs": 10,
    "buffer_size": 50_000,
    "learning_starts": 5_000,
    "batch_size": 100,
    "gradient_steps": 5,
    "total_timesteps": 100_000,
    "hidden_sizes": [64, 64],
    "activation": "silu",
    "dueling": True,
    "double_dqn": True,
    "learning_rate": 1e-3,
    "gamma": 0.99,
    "max_grad_norm": 10.0,
    "tau": 0.02,
    "target_update_period": 1,
    "eps_start": 1.0,
    "eps_end": 0.05,
    "exploration_fraction": 0.5,
    "n_step": 1,
}
# Learning only (not timed against rejax, which has no n-step returns): ours
# with the one change that tuning found, n-step returns.
TUNED = {"n_step": 3}
EVAL_EPISODES = 128
TAIL_STEPS = 10_000
BAR = 475.0


def differences(config) -> list[str]:
    return [
        "Gradient clip: ours clips the global gradient norm at max_grad_norm "
        "(optax.clip_by_global_norm); rejax applies optax.clip, an element-wise clip "
        "of each gradient entry to +-max_grad_norm, and has no global-norm option.",
        "Time limit: ours (gymnax 1.0) bootstraps on the 500-step truncation from "
        "the state the step reached; rejax (gymnax 0.0.9) treats truncation as "
        "termination (no bootstrap), and its stored next_obs of an episode's last "
        "step is the next episode's reset observation (masked by done, so unused).",
        f"Minibatches of {config['batch_size']}: rejax draws them uniformly from its "
        "flat buffer; ours draws batch_size / num_envs = "
        f"{config['batch_size'] // config['num_envs']} transitions of each "
        "environment's part of the buffer (so the run is the same on any number of "
        "devices).",
        "Before learning starts both act uniformly at random; rejax starts learning "
        "when global_step > fill_buffer, ours when the steps reach learning_starts "
        "(the same iteration up to one).",
        "Target update: rejax updates its Polyak target after every iteration "
        "(target_update_freq 1, polyak 0.98), ours on every crossing of a multiple "
        "of target_update_period = 1 env step (every iteration) with tau = 0.02: "
        "the same rule.",
        "Weight initialization: both use flax's default initializers (lecun normal "
        "weights, zero biases); Adam's epsilon is optax's default in both. Loss: "
        "both 0.5 * squared TD error, mean over the minibatch.",
        "rejax runs its evaluation callback inside train; in the timed runs it is a "
        "no-op (one chunk of the whole run, no initial evaluation), so only training "
        "is timed. The final evaluation is untimed for both.",
    ]


# --------------------------------------------------------------------- workers


class OursWorker:
    """convergence_jax.rl.dqn: make_train(DQNConfig) -> train(key)."""

    def __init__(self, config):
        import jax
        import jax.numpy as jnp

        from convergence_jax.rl import ppo
        from convergence_jax.rl.dqn import DQNConfig, make_dqn, make_train

        kwargs = dict(config, hidden_sizes=tuple(config["hidden_sizes"]))
        self.jax, self.config = jax, DQNConfig(**kwargs)
        dqn = make_dqn(self.config)
        self.train = make_train(self.config)
        env, env_params = ppo._make_env(self.config)

        def evaluate(params, key):
            """Greedy returns of EVAL_EPISODES episodes (masked after their end)."""
            keys = jax.random.split(key, EVAL_EPISODES)
            obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)

            def step(carry, k):
                obs, state, ret, alive = carry
                action = jnp.argmax(dqn.q_values(params, obs), -1)
                obs, state, reward, term, trunc, _ = jax.vmap(
                    env.step, in_axes=(0, 0, 0, None)
                )(jax.random.split(k, EVAL_EPISODES), state, action, env_params)
                ret = ret + reward * alive
                alive = alive * (1.0 - jnp.logical_or(term, trunc))
                return (obs, state, ret, alive), None

            init = (obs, state, jnp.zeros(EVAL_EPISODES), jnp.ones(EVAL_EPISODES))
            steps = env_params.max_steps_in_episode
            (_, _, ret, _), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
            return ret.mean()

        self.evaluate = jax.jit(evaluate)
        self.evaluate_batch = jax.jit(jax.vmap(evaluate))
        self.single = self.batched = None

    def info(self):
        return {"num_updates": self.config.num_updates}

    def compile(self, seeds):
        jax = self.jax
        start = time.perf_counter()
        if seeds:
            keys = jax.random.split(jax.random.key(0), seeds)
            self.batched = jax.jit(jax.vmap(self.train)).lower(keys).compile()
        else:
            self.single = jax.jit(self.train).lower(jax.random.key(0)).compile()
        return time.perf_counter() - start

    def run(self, seed, seeds):
        import numpy as np

        jax = self.jax
        key = jax.random.key(seed)
        start, cpu = time.perf_counter(), time.process_time()
        if seeds:
            out = self.batched(jax.random.split(key, seeds))
        else:
            out = self.single(key)
        state, metrics = jax.block_until_ready(out)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        eval_key = jax.random.fold_in(key, 1)
        metrics = jax.device_get(metrics)
        if seeds:
            final = self.evaluate_batch(state.params, jax.random.split(eval_key, seeds))
        else:
            final = self.evaluate(state.params, eval_key)
        final = np.atleast_1d(np.asarray(final)).tolist()
        returns = np.atleast_2d(np.nan_to_num(metrics["episode_return"]))
        episodes = np.atleast_2d(metrics["episodes"])
        steps = np.atleast_2d(metrics["env_steps"])
        tail = steps > steps[:, -1:] - TAIL_STEPS
        train_tail = (returns * episodes * tail).sum(1) / (episodes * tail).sum(1)
        # Curves: mean training return per 2,500 env steps, per seed.
        chunk = max(1, 2_500 // self.config.steps_per_update)
        n = returns.shape[1] // chunk * chunk
        r = (returns[:, :n] * episodes[:, :n]).reshape(len(returns), -1, chunk)
        e = episodes[:, :n].reshape(len(returns), -1, chunk)
        curve = r.sum(2) / np.maximum(e.sum(2), 1)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "env_steps": int(steps[:, -1].sum()),
            "final_return": final,
            "train_tail_return": train_tail.tolist(),
            "curve_steps": steps[0, chunk - 1 : n : chunk].tolist(),
            "curve": curve.tolist(),
            "loss_last": float(np.asarray(metrics["loss"])[..., -1].mean()),
            "q_mean_last": float(np.asarray(metrics["q_mean"])[..., -1].mean()),
        }


class RejaxWorker:
    """rejax DQN: DQN.create(env=..., ...), jax.jit(algo.train)."""

    def __init__(self, config):
        import jax
        import jax.numpy as jnp
        import rejax

        algo = rejax.get_algo("dqn").create(
            env=config["env_id"],
            agent="DuelingQNetwork" if config["dueling"] else "QNetwork",
            agent_kwargs={"activation": {"silu": "swish"}[config["activation"]]},
            num_envs=config["num_envs"],
            buffer_size=config["buffer_size"],
            fill_buffer=config["learning_starts"],
            batch_size=config["batch_size"],
            num_epochs=config["gradient_steps"],
            total_timesteps=config["total_timesteps"],
            eval_freq=config["total_timesteps"],  # one chunk
            skip_initial_evaluation=True,
            learning_rate=config["learning_rate"],
            gamma=config["gamma"],
            max_grad_norm=config["max_grad_norm"],
            polyak=1.0 - config["tau"],
            target_update_freq=config["target_update_period"],
            eps_start=config["eps_start"],
            eps_end=config["eps_end"],
            exploration_fraction=config["exploration_fraction"],
            ddqn=config["double_dqn"],
            normalize_observations=False,
        )
        if config["n_step"] != 1:
            raise ValueError("rejax's DQN has one-step targets only")
        if tuple(config["hidden_sizes"]) != (64, 64):
            raise ValueError("rejax's DQN agent has fixed 64-64 hidden layers")
        self.jax, self.algo = jax, algo
        self.timed_algo = algo.replace(eval_callback=lambda a, ts, rng: jnp.zeros(()))
        evaluate = algo.eval_callback
        self.evaluate = jax.jit(lambda ts, key: evaluate(algo, ts, key)[1].mean())
        self.evaluate_batch = jax.jit(
            jax.vmap(lambda ts, key: evaluate(algo, ts, key)[1].mean())
        )
        self.single = self.batched = None

    def info(self):
        a = self.algo
        return {
            "rejax_config": {
                "num_envs": a.num_envs,
                "buffer_size": a.buffer_size,
                "fill_buffer": a.fill_buffer,
                "batch_size": a.batch_size,
                "num_epochs": a.num_epochs,
                "total_timesteps": a.total_timesteps,
                "learning_rate": float(a.learning_rate),
                "max_grad_norm": float(a.max_grad_norm),
                "polyak": float(a.polyak),
                "target_update_freq": a.target_update_freq,
                "ddqn": bool(a.ddqn),
                "agent": repr(a.agent),
            }
        }

    def compile(self, seeds):
        jax = self.jax
        train = self.timed_algo.train
        start = time.perf_counter()
        if seeds:
            keys = jax.random.split(jax.random.key(0), seeds)
            self.batched = jax.jit(jax.vmap(train)).lower(keys).compile()
        else:
            self.single = jax.jit(train).lower(jax.random.key(0)).compile()
        return time.perf_counter() - start

    def run(self, seed, seeds):
        import numpy as np

        jax = self.jax
        key = jax.random.key(seed)
        start, cpu = time.perf_counter(), time.process_time()
        if seeds:
            out = self.batched(jax.random.split(key, seeds))
        else:
            out = self.single(key)
        ts, _ = jax.block_until_ready(out)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        eval_key = jax.random.fold_in(key, 1)
        if seeds:
            final = self.evaluate_batch(ts, jax.random.split(eval_key, seeds))
        else:
            final = self.evaluate(ts, eval_key)
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "env_steps": int(np.asarray(ts.global_step).sum()),
            "final_return": np.atleast_1d(np.asarray(final)).tolist(),
        }


def worker_main(kind, config):
    out = sys.stdout
    sys.stdout = sys.stderr  # keep stray prints off the protocol channel
    import jax

    worker = {"ours": OursWorker, "rejax": RejaxWorker}[kind](config)
    info = {"jax": jax.__version__, "device": str(jax.devices()[0])}
    info["platform"] = jax.devices()[0].platform
    from importlib.metadata import version

    for package in ("jaxlib", "flax", "optax", "gymnax", "rejax"):
        if not (kind == "ours" and package == "rejax"):
            info[package] = version(package)
    info.update(worker.info())
    print(json.dumps(info), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "compile":
            reply = {"seconds": worker.compile(cmd["seeds"])}
        elif cmd["op"] == "run":
            reply = worker.run(cmd["seed"], cmd["seeds"])
        else:
            break
        print(json.dumps(reply), file=out, flush=True)


# ---------------------------------------------------------------------- parent


class Worker(JsonWorker):
    def __init__(self, kind, python, config):
        argv = [python, __file__, "--worker", kind, "--config", json.dumps(config)]
        super().__init__(argv, worker_env())


def rejax_python(given):
    if given:
        return given
    sys.path.insert(0, str(ROOT))
    import ppo_cartpole  # the venv recipe lives there

    return ppo_cartpole.peer_python(
        "rejax", "rejax", ppo_cartpole.rejax_packages(), None
    )


def main(args):
    config = args.config
    result = {
        "benchmark": NAME,
        "config": config,
        "machine": machine_info(),
        "load_average_start": os.getloadavg(),
        "differences": differences(config),
        "eval_episodes": EVAL_EPISODES,
        "bar": BAR,
    }
    result["tuned"] = TUNED
    python = {"ours": sys.executable, "rejax": rejax_python(args.rejax_python)}
    workers = {name: Worker(name, python[name], config) for name in python}
    result["versions"] = {name: w.info for name, w in workers.items()}
    tuned = Worker("ours", sys.executable, dict(config, **TUNED))

    # Speed: single runs, alternated rounds after one untimed call each.
    compile_seconds = {}
    for name, w in workers.items():
        compile_seconds[name] = w.ask(op="compile", seeds=0)["seconds"]
        w.ask(op="run", seed=0, seeds=0)
    finals = {name: [] for name in workers}

    def contender(name):
        def call(r):
            out = workers[name].ask(op="run", seed=100 + r, seeds=0)
            finals[name].append(out["final_return"][0])
            return out

        return call

    timing = alternate({name: contender(name) for name in workers}, args.repeats)
    steps = config["total_timesteps"]
    rates = {
        name: summarize([steps / rec[name] for rec in timing["rounds"]])
        for name in workers
    }
    result["single"] = {
        "timing": timing,
        "env_steps_per_second": rates,
        "compile_seconds": compile_seconds,
        "final_return": {name: summarize(v) for name, v in finals.items()},
        "ours_over_rejax": speedup(timing, "ours", "rejax"),
    }
    result["load_average_end"] = os.getloadavg()
    if not args.quick:  # partial results, in case the learning runs are cut short
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")

    # Learning: one vmapped call over the seeds each.
    learning = {}
    # rejax's learning shows in its timed single runs (each evaluated, untimed).
    for name, w in [("ours", workers["ours"]), ("ours_tuned", tuned)]:
        compile_s = w.ask(op="compile", seeds=args.seeds)["seconds"]
        out = w.ask(op="run", seed=0, seeds=args.seeds)
        out["compile_seconds"] = compile_s
        final = out["final_return"]
        out["seeds_at_bar"] = sum(f >= BAR for f in final)
        learning[name] = out
        if name == "ours_tuned":
            w.close()
        print(f"{name}: {args.seeds} seeds, final returns {[round(f) for f in final]}"
              f", {out['seconds']:.1f} s")  # fmt: skip
    result["learning"] = learning

    result["load_average_end"] = os.getloadavg()
    for w in workers.values():
        w.close()
    return result


def markdown(result) -> str:
    c, m, v = result["config"], result["machine"], result["versions"]
    lo, sg = result.get("learning"), result["single"]
    rates, ratio = sg["env_steps_per_second"], sg["ours_over_rejax"]
    seeds = len(lo["ours"]["final_return"]) if lo else 0
    labels = {"ours": "convergence_jax.rl", "rejax": f"rejax {v['rejax']['rejax']}"}
    tuned = ", ".join(f"{k}={val}" for k, val in result["tuned"].items())
    labels["ours_tuned"] = f"convergence_jax.rl, {tuned} (tuned, not timed)"

    def row(values):
        return " | ".join(f"{x:.1f}" for x in values)

    x = f"{ratio['of_medians']:.2f}x"
    if ratio["verdict"] != "tie":
        x = f"**{x}**"
    p = ratio["paired"]
    lines = [
        "# DQN on CartPole-v1: convergence_jax vs rejax",
        "",
        f"{c['env_id']}, rejax's own DQN CartPole configuration: {c['num_envs']} "
        f"envs, {c['gradient_steps']} gradient steps of {c['batch_size']} per "
        f"iteration, buffer {c['buffer_size']:,}, {c['learning_starts']:,} uniform "
        f"steps first, {'double ' if c['double_dqn'] else ''}DQN with a "
        f"{'dueling ' if c['dueling'] else ''}"
        f"{'-'.join(map(str, c['hidden_sizes']))} {c['activation']} network, Adam "
        f"{c['learning_rate']}, gamma {c['gamma']}, Polyak tau {c['tau']} every "
        f"{c['target_update_period']} step(s), epsilon {c['eps_start']} -> "
        f"{c['eps_end']} over {c['exploration_fraction']:.0%} of "
        f"{c['total_timesteps']:,} env steps, gradient clip {c['max_grad_norm']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; both "
        f"on {v['ours']['platform']}. Ours: jax {v['ours']['jax']}, flax "
        f"{v['ours']['flax']}, gymnax {v['ours']['gymnax']}. rejax "
        f"{v['rejax']['rejax']}: jax {v['rejax']['jax']}, flax {v['rejax']['flax']}, "
        f"gymnax {v['rejax']['gymnax']}. 1-minute load at start / end: "
        f"{result['load_average_start'][0]:.2f} / {result['load_average_end'][0]:.2f}"
        " (the machine was shared; each round's load is below).",
        "",
    ]
    learning, lines = lines, []
    lines += [
        f"## Learning: {seeds} seeds vmapped in one call",
        "",
        f"Final return = mean return of {result['eval_episodes']} evaluation "
        "greedy episodes of each seed's final policy. Bar (issue 15): >= "
        f"{result['bar']:.0f} in at least 7 of 8 seeds.",
        "",
        "| library | "
        + " | ".join(f"seed {i}" for i in range(seeds))
        + " | seeds >= bar | wall s (one call) |",
        "|---|" + "---:|" * (seeds + 2),
    ]
    for name in ("ours", "ours_tuned") if lo else ():
        f = lo[name]
        lines.append(
            f"| {labels[name]} | {row(f['final_return'])} | "
            f"{f['seeds_at_bar']} / {seeds} | {f['seconds']:.1f} |"
        )
    for name in ("ours", "ours_tuned") if lo else ():
        lines.append(
            f"| {labels[name]}: training episodes of the last {TAIL_STEPS:,} steps "
            f"(epsilon {c['eps_end']}) | {row(lo[name]['train_tail_return'])} | | |"
        )
    lines += [
        "",
        "The two configurations differ only in n_step; the identical one "
        "(n_step=1) is the one timed against rejax below. rejax's learning on it: "
        "the final-return column of the timed single runs below (one seed per "
        "round, its own 128-episode evaluation, untimed).",
        "",
        f"Curves (ours, training returns per 2,500 steps, every seed, both "
        f"configurations): {NAME}.png.",
        "",
    ]
    if lo:
        learning += lines
    else:
        learning += ["## Learning: not run (cut short)", ""]
    lines = learning
    lines += [
        "## Speed: one training run, steady state",
        "",
        f"{len(sg['timing']['rounds'])} alternated rounds after one untimed call "
        "each (the order rotated every round); env steps per second of a whole "
        f"run of {c['total_timesteps']:,} steps, wall clock.",
        "",
        "| library | env steps / s, median | min .. max | compile (s) | "
        "final return, median (min .. max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("ours", "rejax"):
        r, f = rates[name], sg["final_return"][name]
        lines.append(
            f"| {labels[name]} | {r['median']:,.0f} | {r['min']:,.0f} .. "
            f"{r['max']:,.0f} | {sg['compile_seconds'][name]:.1f} | "
            f"{f['median']:.1f} ({f['min']:.1f} .. {f['max']:.1f}) |"
        )
    verdict = {
        "faster": "faster: the spreads do not overlap",
        "slower": "slower: the spreads do not overlap",
        "tie": "tie: the spreads overlap 1.0x",
    }[ratio["verdict"]]
    lines += [
        "",
        f"ours / rejax: {x} (ratio of medians); range {ratio['range'][0]:.2f} .. "
        f"{ratio['range'][1]:.2f}x (ours' min / rejax's max .. max / min); per "
        f"round {p['min']:.2f} / {p['median']:.2f} / {p['max']:.2f}x (min / median "
        f"/ max); {verdict}.",
        "",
        "| round | order | load (1 min, after) | ours env steps / s | rejax env "
        "steps / s | ours / rejax |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    steps = c["total_timesteps"]
    for i, rec in enumerate(sg["timing"]["rounds"]):
        a, b = steps / rec["ours"], steps / rec["rejax"]
        lines.append(
            f"| {i} | {', '.join(rec['order'])} | {rec['load']:.2f} | {a:,.0f} | "
            f"{b:,.0f} | {a / b:.2f} |"
        )
    lines += ["", "## What differs", ""]
    lines += [f"- {d}" for d in result["differences"]]
    lines.append("")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    tuned = ", ".join(f"{k}={v}" for k, v in result["tuned"].items())
    for ax, name, title in (
        (axes[0], "ours", "n_step=1 (rejax's configuration)"),
        (axes[1], "ours_tuned", tuned),
    ):
        lo = result["learning"][name]
        for i, curve in enumerate(lo["curve"]):
            ax.plot(lo["curve_steps"], curve, lw=1, label=f"seed {i}")
        ax.axhline(result["bar"], color="k", ls="--", lw=0.8)
        ax.set_xlabel("environment steps")
        ax.set_title(f"DQN CartPole-v1, {title}", fontsize=9)
    axes[0].set_ylabel("training episode return (epsilon-greedy)")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "rejax"], help=argparse.SUPPRESS)
    p.add_argument("--config", type=json.loads, default=CONFIG, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds")
    p.add_argument("--seeds", type=int, default=8, help="vmapped seeds (learning)")
    p.add_argument("--rejax-python", help="interpreter with rejax and gymnax 0.0.9")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny smoke run, no files")
    p.add_argument("--markdown-from", type=Path, help="rewrite .md/.png from a .json")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.worker:
        worker_main(args.worker, args.config)
        sys.exit(0)
    if args.markdown_from:
        result = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(result))
        if "learning" in result:
            plot(result, args.markdown_from.with_suffix(".png"))
        sys.exit(0)
    if args.quick:
        args.config = dict(CONFIG, total_timesteps=8_000, learning_starts=2_000)
        args.repeats, args.seeds = 2, 2
    result = main(args)
    if not args.quick:  # the measurements first, in case the table fails
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    print(text)
    if not args.quick:
        (args.out / f"{NAME}.md").write_text(text)
        plot(result, args.out / f"{NAME}.png")
        print(f"wrote {args.out / NAME}.json, .md and .png")
