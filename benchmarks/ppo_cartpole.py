"""PPO on CartPole-v1: convergence_jax.rl vs rejax vs Stable-Baselines3, side by side.

Every contender trains the same PPO in the same session on the same machine:
CartPole-v1, 16 environments x 128 steps per rollout, 4 epochs of 4 minibatches,
separate 64-64 tanh MLPs for actor and critic, 500,000 environment steps (rounded
down to whole rollouts: 244 x 2048 = 499,712), Adam at a constant 2.5e-4, gamma
0.99, GAE lambda 0.95, clip 0.2, entropy 0.01, value 0.5, max grad norm 0.5.

* Single run: environment steps per second of a whole training run, steady state
  (an untimed first call after compilation, then timed rounds: each round runs
  every contender once, the order reversed every other round, and records the
  1-minute load), each contender in its own worker process. Compile time of the
  JAX programs is reported separately. SB3 (25-45 s a run here) runs in the
  first rounds only (--sb3-repeats).
* Ratios: ratio of medians, its range (one's min / other's max .. max / min) and
  the min / median / max of the per-round ratios; a ratio whose range contains
  1.0x is reported as a tie, never in bold.
* 16 seeds: one call of the training program vmapped over 16 keys (ours and rejax),
  as aggregate environment steps per second, against SB3's single-run figure (16
  SB3 runs one after another).
* Learning: each contender's final mean episode return, so a reader sees that all
  of them learned (how each is measured is in the notes of the results).

The peers need their own environments (rejax 0.1.3 needs gymnax 0.0.9, whose
``step`` returns four values; SB3 needs torch): unless given with --rejax-python /
--sb3-python, the script creates ``benchmarks/.venvs/rejax`` (rejax, gymnax 0.0.9
and this JAX version) and ``benchmarks/.venvs/sb3`` (CPU torch, stable-baselines3,
gymnasium), both git-ignored.

    python benchmarks/ppo_cartpole.py                # full run, writes results/
    python benchmarks/ppo_cartpole.py --quick        # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info
from _worker import JsonWorker, summarize, worker_env

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VENVS = ROOT / ".venvs"
NAME = "ppo_cartpole"

REJAX_PACKAGES = ["rejax==0.1.3", "gymnax==0.0.9"]  # + this jax, jaxlib and flax
SB3_PACKAGES = ["torch==2.13.0", "stable-baselines3==2.9.2", "gymnasium==1.4.0"]

# The one configuration; each worker maps it onto its library's options.
CONFIG = {
    "env_id": "CartPole-v1",
    "num_envs": 16,
    "num_steps": 128,
    "total_timesteps": 500_000,
    "update_epochs": 4,
    "num_minibatches": 4,
    "hidden_sizes": [64, 64],
    "activation": "tanh",
    "learning_rate": 2.5e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_eps": 0.2,
    "ent_coef": 0.01,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
}

# A ratio is called (faster, slower or tie) only from this many rates per side.
MIN_ROUNDS_FOR_VERDICT = 3

# Ours: mean return of the episodes finished in the last updates of a run.
FINAL_UPDATES = 10


def differences(config) -> list[str]:
    """What differs between the contenders although the configuration is one."""
    batch = config["num_envs"] * config["num_steps"]
    updates = config["total_timesteps"] // batch
    steps = updates * batch
    return [
        f"Steps: {config['total_timesteps']:,} rounded down to whole rollouts of "
        f"{config['num_envs']} x {config['num_steps']}, i.e. {updates} rollouts = "
        f"{steps:,} steps, for all three (ours: total_timesteps // batch; rejax: "
        f"total_timesteps = eval_freq = {steps:,}; SB3: total_timesteps = "
        f"{steps:,}).",
        "Learning rate constant for all three (ours: anneal_lr=False; rejax and SB3 "
        "have no annealing by default).",
        "rejax applies max_grad_norm with optax.clip, an element-wise clip of each "
        "gradient entry to +-max_grad_norm, not a clip of the global norm (ours: "
        "optax.clip_by_global_norm; SB3: torch clip_grad_norm_); rejax has no "
        "option for a global-norm clip.",
        "rejax trains actor and critic with two Adam optimizers on separate losses "
        "(actor: policy loss - ent_coef * entropy; critic: vf_coef * value loss), so "
        "vf_coef only rescales the critic's gradient; ours and SB3 take one Adam "
        "step on the summed loss (both still have separate actor and critic "
        "networks).",
        "Value clipping: ours and rejax clip the value change to +-clip_eps; SB3 is "
        "given clip_range_vf=clip_eps to match (its default is no value clipping).",
        "Time limit: rejax (gymnax 0.0.9) treats the 500-step truncation as a "
        "termination and does not bootstrap; ours (gymnax 1.0) and SB3 bootstrap on "
        "truncation.",
        f"Minibatches of {batch // config['num_minibatches']} in all three: rejax "
        f"and SB3 shuffle the {batch} transitions of a rollout; ours takes "
        f"{config['num_steps'] // config['num_minibatches']} random time steps of "
        f"each of the {config['num_envs']} environments.",
        "rejax evaluates its policy every eval_freq steps inside train; in the timed "
        f"runs its evaluation callback is a no-op (one chunk of {updates} rollouts, "
        "no initial evaluation), so only training is timed.",
        "Environments: ours and rejax step gymnax CartPole-v1 inside the compiled "
        "program; SB3 steps gymnasium CartPole-v1 in NumPy (DummyVecEnv, Monitor), "
        "on CPU with the torch threads given above. Same dynamics and 500-step "
        "limit.",
        "Weight initialization and the Adam epsilon are each library's default; "
        "observations and rewards are not normalized anywhere.",
    ]


# --------------------------------------------------------------------- workers


def _final_return(episode_return, last=FINAL_UPDATES):
    """Mean of the per-update mean returns of the last updates (NaN: no episode)."""
    import warnings

    import numpy as np

    tail = np.asarray(episode_return)[..., -last:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no episode ended: NaN
        return np.nanmean(tail, axis=-1)


def _floats(x):
    return [float(v) for v in x]


class OursWorker:
    """convergence_jax.rl: make_train(PPOConfig) -> train(key)."""

    def __init__(self, config):

        import jax

        from convergence_jax.rl import PPOConfig, make_train

        kwargs = dict(config, hidden_sizes=tuple(config["hidden_sizes"]))
        kwargs["anneal_lr"] = False  # constant, like the peers
        self.jax = jax
        self.config = PPOConfig(**kwargs)
        self.train = make_train(self.config)
        self.single = self.batched = None

    def info(self):
        return {"anneal_lr": getattr(self.config, "anneal_lr", None)}

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
        jax = self.jax
        key = jax.random.key(seed)
        start = time.perf_counter()
        if seeds:
            out = self.batched(jax.random.split(key, seeds))
        else:
            out = self.single(key)
        _, metrics = jax.block_until_ready(out)
        seconds = time.perf_counter() - start
        metrics = jax.device_get(metrics)
        steps = metrics["env_steps"][..., -1]
        final = _final_return(metrics["episode_return"])
        if seeds:
            return seconds, int(steps.sum()), _floats(final)
        return seconds, int(steps), [float(final)]


class RejaxWorker:
    """rejax PPO: PPO.create(env=..., ...), jax.jit(algo.train)."""

    def __init__(self, config):
        import jax
        import jax.numpy as jnp
        import rejax

        batch = config["num_envs"] * config["num_steps"]
        steps = config["total_timesteps"] // batch * batch
        algo = rejax.get_algo("ppo").create(
            env=config["env_id"],
            num_envs=config["num_envs"],
            num_steps=config["num_steps"],
            num_epochs=config["update_epochs"],
            num_minibatches=config["num_minibatches"],
            learning_rate=config["learning_rate"],
            gamma=config["gamma"],
            gae_lambda=config["gae_lambda"],
            clip_eps=config["clip_eps"],
            ent_coef=config["ent_coef"],
            vf_coef=config["vf_coef"],
            max_grad_norm=config["max_grad_norm"],
            total_timesteps=steps,
            eval_freq=steps,  # one chunk: train() runs steps / batch iterations
            skip_initial_evaluation=True,
            normalize_observations=False,
            normalize_rewards=False,
            agent_kwargs={
                "activation": config["activation"],
                "hidden_layer_sizes": tuple(config["hidden_sizes"]),
            },
        )
        self.jax, self.algo = jax, algo
        # Timed runs train only; the final policy is evaluated afterwards with
        # rejax's own callback (128 episodes, actions sampled).
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
                "num_steps": a.num_steps,
                "num_epochs": a.num_epochs,
                "num_minibatches": a.num_minibatches,
                "total_timesteps": a.total_timesteps,
                "eval_freq": a.eval_freq,
                "learning_rate": float(a.learning_rate),
                "max_grad_norm": float(a.max_grad_norm),
                "actor": repr(a.actor),
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
        jax = self.jax
        key = jax.random.key(seed)
        start = time.perf_counter()
        if seeds:
            out = self.batched(jax.random.split(key, seeds))
        else:
            out = self.single(key)
        ts, _ = jax.block_until_ready(out)
        seconds = time.perf_counter() - start
        eval_key = jax.random.fold_in(key, 1)
        if seeds:
            keys = jax.random.split(eval_key, seeds)
            final = _floats(jax.device_get(self.evaluate_batch(ts, keys)))
            return seconds, int(ts.global_step.sum()), final
        final = float(self.evaluate(ts, eval_key))
        return seconds, int(ts.global_step), [final]


class SB3Worker:
    """Stable-Baselines3 PPO, torch on CPU, DummyVecEnv of gymnasium CartPole."""

    def __init__(self, config, torch_threads):
        import torch

        torch.set_num_threads(torch_threads)
        self.torch, self.config = torch, config

    def info(self):
        from importlib.metadata import version

        return {
            "torch": self.torch.__version__,
            "torch_threads": self.torch.get_num_threads(),
            "stable_baselines3": version("stable-baselines3"),
            "gymnasium": version("gymnasium"),
        }

    def compile(self, seeds):
        return None

    def run(self, seed, seeds):
        import numpy as np
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import DummyVecEnv

        c = self.config
        batch = c["num_envs"] * c["num_steps"]
        env = make_vec_env(
            c["env_id"], n_envs=c["num_envs"], seed=seed, vec_env_cls=DummyVecEnv
        )
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=c["num_steps"],
            batch_size=batch // c["num_minibatches"],
            n_epochs=c["update_epochs"],
            learning_rate=c["learning_rate"],
            gamma=c["gamma"],
            gae_lambda=c["gae_lambda"],
            clip_range=c["clip_eps"],
            clip_range_vf=c["clip_eps"],
            ent_coef=c["ent_coef"],
            vf_coef=c["vf_coef"],
            max_grad_norm=c["max_grad_norm"],
            policy_kwargs={
                "net_arch": {"pi": c["hidden_sizes"], "vf": c["hidden_sizes"]},
                "activation_fn": self.torch.nn.Tanh,
            },
            device="cpu",
            seed=seed,
            verbose=0,
        )
        start = time.perf_counter()
        model.learn(total_timesteps=c["total_timesteps"] // batch * batch)
        seconds = time.perf_counter() - start
        final = float(np.mean([e["r"] for e in model.ep_info_buffer]))
        env.close()
        return seconds, int(model.num_timesteps), [final]


def worker_main(kind, config, torch_threads):
    """Answer one JSON command per stdin line with one JSON line on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # keep stray prints off the protocol channel
    if kind == "sb3":
        worker = SB3Worker(config, torch_threads)
        info = {"platform": "cpu", "device": "cpu (torch)"}
    else:
        import jax

        worker = {"ours": OursWorker, "rejax": RejaxWorker}[kind](config)
        info = {
            "jax": jax.__version__,
            "device": str(jax.devices()[0]),
            "platform": jax.devices()[0].platform,
        }
        from importlib.metadata import version

        for package in ("jaxlib", "flax", "optax", "gymnax", "rejax"):
            if kind == "ours" and package == "rejax":
                continue
            info[package] = version(package)
    info.update(worker.info())
    print(json.dumps(info), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "compile":
            reply = {"seconds": worker.compile(cmd["seeds"])}
        elif cmd["op"] == "run":
            seconds, steps, final = worker.run(cmd["seed"], cmd["seeds"])
            reply = {"seconds": seconds, "env_steps": steps, "final_return": final}
        else:
            break
        print(json.dumps(reply), file=out, flush=True)


# ---------------------------------------------------------------------- parent


def _installed(python, module, packages) -> bool:
    """``module`` imports and every ``name==version`` pin is the installed one."""
    pins = [p.split("==") for p in packages]
    pins = [(name.split("[")[0], want) for name, want in pins]
    code = (
        f"import {module}\n"
        "from importlib.metadata import version\n"
        f"for name, want in {pins!r}:\n"
        "    assert version(name).split('+')[0] == want, (name, version(name))\n"
    )
    probe = [str(python), "-c", code]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def peer_python(name, module, packages, given=None) -> str:
    """An interpreter that imports ``module``: the one given, or a venv made for it."""
    if given:
        return given
    venv = VENVS / name
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if not _installed(python, module, packages):
        print(f"installing {' '.join(packages)} into {venv}")
        pip = [str(python), "-m", "pip", "install", "-q", *packages]
        subprocess.run(pip, check=True)
    return str(python)


def rejax_packages() -> list[str]:
    """rejax's pins plus this interpreter's jax, jaxlib and flax (same XLA)."""
    from importlib.metadata import PackageNotFoundError, version

    jax_version = version("jax")
    jax = f"jax=={jax_version}"
    try:
        version("jax-cuda12-plugin")
        jax = f"jax[cuda12]=={jax_version}"
    except PackageNotFoundError:
        pass
    return [
        *REJAX_PACKAGES,
        jax,
        f"jaxlib=={version('jaxlib')}",
        f"flax=={version('flax')}",
    ]


class Worker(JsonWorker):
    def __init__(self, kind, python, args):
        env = worker_env()
        if kind == "sb3":
            threads = str(args.torch_threads)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        argv = [
            python, __file__, "--worker", kind,
            "--config", json.dumps(args.config),
            "--torch-threads", str(args.torch_threads),
        ]  # fmt: skip
        super().__init__(argv, env)


def _load() -> float:
    """The machine's 1-minute load average now."""
    return os.getloadavg()[0]


def timed_runs(workers, repeats, seeds):
    """Compile, one untimed call each, then rounds alternating between the workers.

    Each round runs every worker that still has runs left, in the workers' order on
    even rounds and reversed on odd rounds, so that a change in load hits all of them
    alike; the 1-minute load average is read before each round and after the last.
    SB3 compiles nothing and gets no untimed call (a run is long; torch's one-time
    costs are negligible next to it).
    """
    figures = {}
    for name, w in workers.items():
        compile_s = w.ask(op="compile", seeds=seeds)["seconds"]
        first = None
        if compile_s is not None:
            first = w.ask(op="run", seed=0, seeds=seeds)["seconds"]
        figures[name] = {
            "compile_seconds": compile_s,
            "first_call_seconds": first,
            "runs": [],
        }
    rounds = []
    for rep in range(max(repeats.values())):
        order = [name for name in workers if rep < repeats[name]]
        if rep % 2:
            order.reverse()
        entry = {"round": rep + 1, "load_1min_before": _load(), "order": order}
        rates = {}
        for name in order:
            reply = workers[name].ask(op="run", seed=rep + 1, seeds=seeds)
            figures[name]["runs"].append(reply)
            rates[name] = reply["env_steps"] / reply["seconds"]
        entry["env_steps_per_second"] = rates
        rounds.append(entry)
        shown = "  ".join(f"{n} {r:,.0f}" for n, r in rates.items())
        print(f"round {rep + 1}  load {entry['load_1min_before']:.2f}  {shown}")
    load_after = _load()
    for f in figures.values():
        runs = f.pop("runs")
        f["rounds"] = len(runs)
        f["run_seconds"] = summarize([r["seconds"] for r in runs])
        f["env_steps"] = runs[0]["env_steps"]
        f["env_steps_per_second"] = summarize(
            [r["env_steps"] / r["seconds"] for r in runs]
        )
        returns = [v for r in runs for v in r["final_return"]]
        f["final_return"] = summarize(returns)
    loads = [r["load_1min_before"] for r in rounds] + [load_after]
    return {
        "contenders": figures,
        "rounds": rounds,
        "load_1min": {
            "before_first_round": loads[0],
            "after_last_round": load_after,
            "min": min(loads),
            "max": max(loads),
        },
    }


def compare(timing, a, b, b_rate=None):
    """a's env steps / s against b's: ratio of medians, spreads and a verdict.

    ``range`` is a's min / b's max .. a's max / b's min (the ratio's extremes over
    the two contenders' spreads); ``paired`` gives min / median / max of the per-round
    ratios of the rounds both ran in. The verdict is "faster" or "slower" only when
    ``range`` lies wholly above or below 1.0x (the min..max spreads of the two
    rates do not overlap); otherwise it is a tie. With fewer than
    MIN_ROUNDS_FOR_VERDICT rates on either side there is no spread to speak of and
    no verdict. ``b_rate`` (a summary) stands in
    for b's rates when b did not run in these rounds.
    """
    ra = timing["contenders"][a]["env_steps_per_second"]
    rb = b_rate or timing["contenders"][b]["env_steps_per_second"]
    low, high = ra["min"] / rb["max"], ra["max"] / rb["min"]
    if min(len(ra["values"]), len(rb["values"])) < MIN_ROUNDS_FOR_VERDICT:
        verdict = "too few rounds"
    else:
        verdict = "faster" if low > 1 else "slower" if high < 1 else "tie"
    out = {
        "of_medians": ra["median"] / rb["median"],
        "range": [low, high],
        "verdict": verdict,
    }
    if b_rate is None:
        per_round = [
            r["env_steps_per_second"][a] / r["env_steps_per_second"][b]
            for r in timing["rounds"]
            if a in r["env_steps_per_second"] and b in r["env_steps_per_second"]
        ]
        out["paired"] = {
            "rounds": len(per_round),
            "min": min(per_round),
            "median": statistics.median(per_round),
            "max": max(per_round),
            "values": per_round,
        }
    return out


def main(args):
    pythons = {
        "convergence_jax": sys.executable,
        "rejax": peer_python("rejax", "rejax", rejax_packages(), args.rejax_python),
        "sb3": peer_python("sb3", "stable_baselines3", SB3_PACKAGES, args.sb3_python),
    }
    kinds = {"convergence_jax": "ours", "rejax": "rejax", "sb3": "sb3"}
    workers = {n: Worker(kinds[n], p, args) for n, p in pythons.items()}
    result = {
        "benchmark": "PPO on CartPole-v1: convergence_jax.rl vs rejax vs SB3",
        "config": args.config,
        "differences": differences(args.config),
        "machine": machine_info(),
        "versions": {name: w.info for name, w in workers.items()},
        "rounds": {
            "jax_single": args.repeats,
            "sb3_single": args.sb3_repeats,
            "seeds": args.seed_repeats,
        },
        "load_average_start": os.getloadavg(),
    }
    print(json.dumps(result["versions"], indent=1))

    # ---- single runs, all three alternating (SB3 in the first rounds only)
    repeats = {
        "convergence_jax": args.repeats,
        "rejax": args.repeats,
        "sb3": args.sb3_repeats,
    }
    single = timed_runs(workers, repeats, seeds=0)
    single["ratios"] = {
        "ours_rejax": compare(single, "convergence_jax", "rejax"),
        "ours_sb3": compare(single, "convergence_jax", "sb3"),
        "rejax_sb3": compare(single, "rejax", "sb3"),
    }
    for name, r in single["ratios"].items():
        print(f"single run, {name}: {r['of_medians']:.2f}x ({r['verdict']})")
    result["single"] = single
    workers.pop("sb3").close()

    # ---- N seeds in one vmapped call, ours and rejax alternating
    if args.seeds:
        repeats = {name: args.seed_repeats for name in workers}
        batched = timed_runs(workers, repeats, seeds=args.seeds)
        batched["seeds"] = args.seeds
        sb3_rate = single["contenders"]["sb3"]["env_steps_per_second"]
        processes = result["machine"]["cores"] // args.torch_threads
        sb3_all_cores = summarize([r * processes for r in sb3_rate["values"]])
        batched["ratios"] = {
            "ours_rejax": compare(batched, "convergence_jax", "rejax"),
            # SB3 has no batched form: 16 runs in sequence run at its single rate.
            "ours_sb3_runs_in_sequence": compare(
                batched, "convergence_jax", "sb3", b_rate=sb3_rate
            ),
            "ours_sb3_if_sb3_fills_all_cores": compare(
                batched, "convergence_jax", "sb3", b_rate=sb3_all_cores
            ),
        }
        for name, r in batched["ratios"].items():
            print(
                f"{args.seeds} seeds, {name}: {r['of_medians']:.2f}x ({r['verdict']})"
            )
        result["seeds"] = batched
    result["load_average_end"] = os.getloadavg()
    for w in workers.values():
        w.close()
    return result


def _rate(f):
    r = f["env_steps_per_second"]
    return f"{r['median']:,.0f} | {r['min']:,.0f} .. {r['max']:,.0f}"


def _compile(f):
    c = f["compile_seconds"]
    return "—" if c is None else f"{c:.1f}"


def _return(f):
    r = f["final_return"]
    return f"{r['mean']:.1f} ({r['min']:.1f} .. {r['max']:.1f})"


def _rounds(n):
    return f"{n} round" if n == 1 else f"{n} rounds"


VERDICT = {
    "faster": "faster: the spreads do not overlap",
    "slower": "slower: the spreads do not overlap",
    "tie": "**tie**: the spreads overlap 1.0x",
    "too few rounds": f"not called: fewer than {MIN_ROUNDS_FOR_VERDICT} rounds",
}


def _ratio_row(label, r, digits=2):
    """One row of a ratio table; the ratio is bold only when it is not a tie."""
    x = f"{r['of_medians']:.{digits}f}x"
    if r["verdict"] in ("faster", "slower"):
        x = f"**{x}**"
    low, high = r["range"]
    paired = r.get("paired")
    paired = (
        f"{paired['min']:.2f} / {paired['median']:.2f} / {paired['max']:.2f} "
        f"({_rounds(paired['rounds'])})"
        if paired
        else "—"
    )
    return (
        f"| {label} | {x} | {low:.{digits}f} .. {high:.{digits}f} | {paired} | "
        f"{VERDICT[r['verdict']]} |"
    )


RATIO_HEAD = [
    "| ratio | of medians | min .. max (min / max .. max / min) | "
    "paired per round, min / median / max | verdict |",
    "|---|---:|---:|---:|---|",
]


def _round_table(timing, names, labels, pair):
    a, b = pair
    head = " | ".join(labels[n] for n in names)
    lines = [
        f"| round | 1-min load before | order | {head} | {labels[a]} / {labels[b]} |",
        "|---:|---:|---|" + "---:|" * len(names) + "---:|",
    ]
    short = {"convergence_jax": "ours", "rejax": "rejax", "sb3": "SB3"}
    for r in timing["rounds"]:
        rates = r["env_steps_per_second"]
        cells = " | ".join(f"{rates[n]:,.0f}" if n in rates else "" for n in names)
        ratio = f"{rates[a] / rates[b]:.2f}" if a in rates and b in rates else ""
        order = ", ".join(short[n] for n in r["order"])
        lines.append(
            f"| {r['round']} | {r['load_1min_before']:.2f} | {order} | {cells} | "
            f"{ratio} |"
        )
    load = timing["load_1min"]
    lines += [
        "",
        f"1-minute load average: {load['before_first_round']:.2f} before the first "
        f"round, {load['after_last_round']:.2f} after the last, "
        f"{load['min']:.2f} .. {load['max']:.2f} over the rounds.",
    ]
    return lines


def markdown(result) -> str:
    m, v, c = result["machine"], result["versions"], result["config"]
    single, reps = result["single"], result["rounds"]
    contenders = single["contenders"]
    ours, rejax, sb3 = v["convergence_jax"], v["rejax"], v["sb3"]
    cpu = f"CPU ({m['cpu']})"

    def device(info):
        return m["gpu"] if info["platform"] == "gpu" else cpu

    steps = contenders["convergence_jax"]["env_steps"]
    sb3_steps = contenders["sb3"]["env_steps"]
    sb3_seconds = contenders["sb3"]["run_seconds"]["median"]
    labels = {
        "convergence_jax": "convergence_jax.rl",
        "rejax": f"rejax {rejax['rejax']}",
        "sb3": f"SB3 {sb3['stable_baselines3']}",
    }
    short = {"convergence_jax": "ours", "rejax": "rejax", "sb3": "SB3"}
    lines = [
        "# PPO on CartPole-v1: convergence_jax vs rejax vs Stable-Baselines3",
        "",
        f"{c['env_id']}, {c['num_envs']} envs x {c['num_steps']} steps per rollout, "
        f"{c['update_epochs']} epochs x {c['num_minibatches']} minibatches, "
        f"{'-'.join(map(str, c['hidden_sizes']))} {c['activation']} MLP actor and "
        f"critic, {steps:,} env steps per run (SB3: {sb3_steps:,}), "
        f"lr {c['learning_rate']} (constant), gamma {c['gamma']}, "
        f"GAE lambda {c['gae_lambda']}, clip {c['clip_eps']}, ent {c['ent_coef']}, "
        f"vf {c['vf_coef']}, max grad norm {c['max_grad_norm']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}. "
        f"Ours: jax {ours['jax']} on {device(ours)}, flax {ours['flax']}, gymnax "
        f"{ours['gymnax']}. rejax {rejax['rejax']}: jax {rejax['jax']} on "
        f"{device(rejax)}, flax {rejax['flax']}, gymnax {rejax['gymnax']}. "
        f"SB3 {sb3['stable_baselines3']}: torch {sb3['torch']} on CPU with "
        f"{sb3['torch_threads']} thread(s), gymnasium {sb3['gymnasium']}. "
        f"1-minute load average at start / end of the benchmark: "
        f"{result['load_average_start'][0]:.2f} / "
        f"{result['load_average_end'][0]:.2f}; each round's load is in the round "
        "tables below.",
        "",
        "How to read the ratios: each contender's rate is summarized by min / "
        "median / max over its rounds. A ratio A / B is given as the ratio of "
        "medians, its range (A's min / B's max .. A's max / B's min) and the min / "
        "median / max of the per-round ratios. It is "
        "bold, and called faster or slower, only when its range lies wholly above or "
        "below 1.0x, i.e. the two min..max spreads do not overlap; otherwise it is a "
        "tie.",
        "",
        "## One training run (steady state, after compilation)",
        "",
        f"{_rounds(reps['jax_single'])} for the JAX libraries after one untimed call "
        "each; in each round every contender runs once, the order reversed every "
        f"other round. SB3 ({sb3_seconds:.0f} s a run, median) runs the same "
        f"{sb3_steps:,} steps in "
        f"the first {_rounds(reps['sb3_single'])} only.",
        "",
        "| library | device | env steps / s (median) | min .. max | rounds | "
        "compile (s) | final return |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("convergence_jax", "rejax", "sb3"):
        f = contenders[name]
        lines.append(
            f"| {labels[name]} | {device(v[name])} | {_rate(f)} | {f['rounds']} | "
            f"{_compile(f)} | {_return(f)} |"
        )
    same_device = ours["platform"] == rejax["platform"]
    ours_cpu = ours["platform"] == "cpu"
    ratios = single["ratios"]
    lines += ["", *RATIO_HEAD]
    if same_device:
        lines.append(_ratio_row("ours / rejax", ratios["ours_rejax"]))
    if ours_cpu:
        lines.append(_ratio_row("ours / SB3", ratios["ours_sb3"], 1))
        lines.append(_ratio_row("rejax / SB3", ratios["rejax_sb3"], 1))
    else:
        lines += ["", "No ratio against SB3: it ran on the CPU, ours did not."]
    lines += ["", "Rounds (env steps / s):", ""]
    lines += _round_table(
        single, ["convergence_jax", "rejax", "sb3"], short, ("convergence_jax", "rejax")
    )
    if "seeds" in result:
        s = result["seeds"]
        n = s["seeds"]
        lines += [
            "",
            f"## {n} seeds: one call vmapped over {n} keys",
            "",
            f"Aggregate env steps per second ({n} x {steps:,} steps per call), "
            f"{_rounds(reps['seeds'])}, alternating, after one untimed call each. SB3 "
            f"has no batched form: {n} SB3 runs go one after another, so its "
            "aggregate is its single-run rate above.",
            "",
            "| library | aggregate env steps / s (median) | min .. max | rounds | "
            "compile (s) | final return, mean over runs (min .. max) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in ("convergence_jax", "rejax"):
            f = s["contenders"][name]
            lines.append(
                f"| {labels[name]}, {n} seeds | {_rate(f)} | {f['rounds']} | "
                f"{_compile(f)} | {_return(f)} |"
            )
        f = contenders["sb3"]
        lines.append(
            f"| {labels['sb3']}, {n} runs in sequence | {_rate(f)} | {f['rounds']} "
            "(single runs) | — | |"
        )
        lines += ["", *RATIO_HEAD]
        if same_device:
            lines.append(
                _ratio_row(f"ours / rejax, {n} seeds", s["ratios"]["ours_rejax"])
            )
        if ours_cpu:
            processes = m["cores"] // sb3["torch_threads"]
            lines.append(
                _ratio_row(
                    f"ours ({n} seeds vmapped) / SB3 ({n} runs in sequence)",
                    s["ratios"]["ours_sb3_runs_in_sequence"],
                    1,
                )
            )
            lines.append(
                _ratio_row(
                    f"ours ({n} seeds vmapped) / SB3 at {processes}x (one process "
                    "per core)",
                    s["ratios"]["ours_sb3_if_sb3_fills_all_cores"],
                    1,
                )
            )
            lines += [
                "",
                f"SB3 uses {sb3['torch_threads']} torch thread(s), so on this "
                f"{m['cores']}-core machine {processes} SB3 processes could run at "
                f"once; the last row assumes a perfect {processes}x from that (not "
                "measured).",
            ]
        lines += ["", "Rounds (aggregate env steps / s):", ""]
        lines += _round_table(
            s, ["convergence_jax", "rejax"], short, ("convergence_jax", "rejax")
        )
    lines += [
        "",
        "## Notes",
        "",
        f"- Final return. Ours: mean return of the training episodes that ended in "
        f"the last {FINAL_UPDATES} rollouts (per-update means, averaged). rejax: "
        "its own evaluation of the final policy (128 episodes, actions sampled), "
        "untimed. SB3: mean return of its last 100 training episodes "
        "(ep_info_buffer). CartPole-v1's maximum is 500.",
        "- Steps per second count environment steps of the whole training run "
        "(rollouts and updates), wall clock, results fetched.",
        "- Configuration differences each library's options could not remove:",
        "",
    ]
    lines += [f"  - {d}" for d in result["differences"]]
    lines.append("")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "rejax", "sb3"], help=argparse.SUPPRESS)
    p.add_argument("--config", type=json.loads, default=CONFIG, help=argparse.SUPPRESS)
    p.add_argument("--total-timesteps", type=int, default=CONFIG["total_timesteps"])
    p.add_argument(
        "--repeats", type=int, default=9, help="timed rounds of single runs (JAX)"
    )
    p.add_argument(
        "--sb3-repeats", type=int, default=3, help="of those rounds, SB3 runs in"
    )
    p.add_argument("--seeds", type=int, default=16, help="vmapped seeds (0: skip)")
    p.add_argument(
        "--seed-repeats", type=int, default=7, help="timed rounds of vmapped calls"
    )
    p.add_argument("--torch-threads", type=int, default=1, help="SB3 torch threads")
    p.add_argument("--rejax-python", help="interpreter with rejax and gymnax 0.0.9")
    p.add_argument("--sb3-python", help="interpreter with stable-baselines3")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. _gpu)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny smoke run, no files")
    p.add_argument(
        "--markdown-from",
        type=Path,
        help="write the .md next to this results .json again, without running",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.worker:
        worker_main(args.worker, args.config, args.torch_threads)
        sys.exit(0)
    if args.markdown_from:
        result = json.loads(args.markdown_from.read_text())
        args.markdown_from.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {args.markdown_from.with_suffix('.md')}")
        sys.exit(0)
    if args.quick:
        args.total_timesteps = 4 * CONFIG["num_envs"] * CONFIG["num_steps"]
        args.repeats, args.sb3_repeats, args.seeds, args.seed_repeats = 3, 1, 2, 2
    args.config = dict(CONFIG, total_timesteps=args.total_timesteps)
    if args.total_timesteps < CONFIG["num_envs"] * CONFIG["num_steps"]:
        sys.exit("--total-timesteps: at least one rollout (2048 steps) is needed")
    result = main(args)
    name = f"{NAME}{args.tag}"
    if not args.quick:  # the measurements first, in case the table fails
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    print(text)
    if not args.quick:
        (args.out / f"{name}.md").write_text(text)
        print(f"wrote {args.out / name}.json and .md")
