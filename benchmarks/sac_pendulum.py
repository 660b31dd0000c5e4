"""SAC (and TD3) on Pendulum-v1: learning over vmapped seeds, and speed vs rejax.

* Learning: ``make_sac_train`` and ``make_td3_train`` on Pendulum-v1, each one
  call vmapped over ``--seeds`` keys; per-seed curves of the training episodes'
  returns, the final training return (mean of each seed's last
  ``FINAL_EPISODES`` episodes) and an evaluation of each seed's final policy
  (SAC: the mode of the squashed Gaussian; TD3: the deterministic actor, no
  noise) over 16 episodes with ``offline.evaluate.evaluate_policy``. The bar:
  SAC's final return >= -250.
* Speed: ours and rejax 0.1.3 train the same SAC configuration (below), one
  seed a run, each library in its own worker process (rejax in its own venv
  with gymnax 0.0.9), after an untimed first call; ``--rounds`` alternating
  rounds (the order rotated), min / median / max of environment steps per
  second, the 1-minute load each round. Compile time is reported separately.
  With ``--td3`` the same for TD3 against rejax's TD3 (whose update schedule
  differs, see the notes).

    python benchmarks/sac_pendulum.py                 # full run, writes results/
    python benchmarks/sac_pendulum.py --quick         # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info
from _timing import alternate, fmt_speedup, speedup
from _worker import JsonWorker, worker_env

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VENVS = ROOT / ".venvs"
NAME = "sac_pendulum"
REJAX_PACKAGES = ["rejax==0.1.3", "gymnax==0.0.9"]  # + this jax, jaxlib and flax

# The one configuration; each side maps it onto its library's options.
CONFIG = {
    "env_id": "Pendulum-v1",
    "num_envs": 1,
    "total_timesteps": 12_000,
    "batch_size": 256,
    "buffer_size": 12_000,
    "hidden_sizes": [64, 64],
    "activation": "silu",
    "learning_rate": 1e-3,
    "gamma": 0.99,
    "tau": 0.01,
    "learning_starts": 1_000,
    # TD3 only
    "policy_delay": 2,
    "exploration_noise": 0.1,
    "target_noise": 0.2,
    "target_noise_clip": 0.5,
}
FINAL_EPISODES = 10
EVAL_EPISODES = 16
BAR = -250.0


def differences(c) -> list[str]:
    return [
        "Time limit: Pendulum-v1 never terminates; its 200-step limit is a "
        "truncation. Ours (gymnax 1.0) bootstraps through it; rejax (gymnax 0.0.9, "
        "one `done` flag) treats it as a termination and does not bootstrap.",
        f"Warm-up: ours takes uniform actions for the first {c['learning_starts']:,} "
        "steps and learns from then on; rejax acts with its (untrained) policy "
        f"from the start and starts learning once global_step > fill_buffer "
        f"({c['learning_starts']:,}).",
        "SAC update order: ours updates the critics, then the actor (against the "
        "updated critics), then the temperature; rejax updates the actor, then the "
        "critics (with the updated actor's next-state samples), then the "
        "temperature. One gradient step of each per environment step in both.",
        "SAC actor: ours is one MLP with 2 x action_dim outputs (mean, log std), "
        "log std clipped to [-5, 2]; rejax has a shared torso with two Dense heads, "
        "log std clipped to [-10, 2]. Same layer sizes; both take log-probabilities "
        "of the unit-box action (tanh correction, no affine term); target entropy "
        "-action_dim and initial alpha 1 in both; alpha = exp(log alpha) in the "
        "temperature loss in both.",
        "Gradients: ours has no clipping; rejax chains optax.clip(max_grad_norm) "
        "with its default max_grad_norm = inf (a no-op clip).",
        "Initialization: flax defaults (LeCun normal, zero bias) in both.",
        f"TD3 (only with --td3): rejax's schedule differs and cannot be set to "
        f"ours: per {c['policy_delay']} environment steps it takes "
        f"{c['policy_delay']} critic steps, then {c['policy_delay']} actor steps on "
        "the same minibatches, and moves the targets every environment step "
        "(polyak); ours takes one critic step per environment step and one actor "
        f"step (and target move) every {c['policy_delay']}-th. Exploration and "
        "smoothing noise are in the unit box for ours and in the action box for "
        "rejax (Pendulum's box is [-2, 2], so rejax's are given twice ours to "
        "match).",
        "Observations and rewards are not normalized anywhere.",
    ]


# --------------------------------------------------------------------- workers


def _ours_configs(c):
    from convergence_jax.rl.sac import SACConfig
    from convergence_jax.rl.td3 import TD3Config

    common = dict(
        env_id=c["env_id"],
        total_timesteps=c["total_timesteps"],
        num_envs=c["num_envs"],
        batch_size=c["batch_size"],
        buffer_size=c["buffer_size"],
        hidden_sizes=tuple(c["hidden_sizes"]),
        activation=c["activation"],
        actor_lr=c["learning_rate"],
        critic_lr=c["learning_rate"],
        gamma=c["gamma"],
        tau=c["tau"],
        learning_starts=c["learning_starts"],
    )
    sac = SACConfig(**common, alpha_lr=c["learning_rate"])
    td3 = TD3Config(
        **common,
        policy_delay=c["policy_delay"],
        exploration_noise=c["exploration_noise"],
        target_noise=c["target_noise"],
        target_noise_clip=c["target_noise_clip"],
    )
    return sac, td3


class OursWorker:
    def __init__(self, config, algo):
        import jax

        from convergence_jax.rl.sac import make_sac_train
        from convergence_jax.rl.td3 import make_td3_train

        sac, td3 = _ours_configs(config)
        self.jax = jax
        self.train = make_sac_train(sac) if algo == "sac" else make_td3_train(td3)
        self.compiled = None

    def compile(self):
        start = time.perf_counter()
        self.compiled = self.jax.jit(self.train).lower(self.jax.random.key(0)).compile()
        return time.perf_counter() - start

    def run(self, seed):
        import numpy as np

        jax = self.jax
        start, cpu = time.perf_counter(), time.process_time()
        _, metrics = jax.block_until_ready(self.compiled(jax.random.key(seed)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        ret = np.asarray(metrics["episode_return"])
        ret = ret[~np.isnan(ret)]
        final = float(ret[-FINAL_EPISODES:].mean())
        return seconds, cpu, int(metrics["env_steps"][-1]), final


class RejaxWorker:
    def __init__(self, config, algo):
        import jax
        import jax.numpy as jnp
        import rejax

        c = config
        common = dict(
            env=c["env_id"],
            num_envs=c["num_envs"],
            total_timesteps=c["total_timesteps"],
            eval_freq=c["total_timesteps"],  # one chunk; its callback is a no-op
            skip_initial_evaluation=True,
            batch_size=c["batch_size"],
            buffer_size=c["buffer_size"],
            fill_buffer=c["learning_starts"],
            learning_rate=c["learning_rate"],
            gamma=c["gamma"],
            polyak=1.0 - c["tau"],
            num_epochs=1,
            normalize_observations=False,
            normalize_rewards=False,
        )
        if algo == "sac":
            algo_obj = rejax.get_algo("sac").create(
                **common,
                agent_kwargs={"activation": "swish"},
                hidden_layer_sizes=tuple(c["hidden_sizes"]),
            )
        else:
            scale = 2.0  # Pendulum's box is [-2, 2]: rejax's noise is in it
            algo_obj = rejax.get_algo("td3").create(
                **common,
                actor_kwargs={"activation": "swish"},
                critic_kwargs={"activation": "swish"},
                policy_delay=c["policy_delay"],
                exploration_noise=c["exploration_noise"] * scale,
                target_noise=c["target_noise"] * scale,
                target_noise_clip=c["target_noise_clip"] * scale,
            )
        self.jax, self.algo = jax, algo_obj
        self.timed = algo_obj.replace(eval_callback=lambda a, ts, rng: jnp.zeros(()))
        evaluate = algo_obj.eval_callback
        self.evaluate = jax.jit(lambda ts, key: evaluate(algo_obj, ts, key)[1].mean())
        self.compiled = None

    def compile(self):
        start = time.perf_counter()
        self.compiled = (
            self.jax.jit(self.timed.train).lower(self.jax.random.key(0)).compile()
        )
        return time.perf_counter() - start

    def run(self, seed):
        jax = self.jax
        key = jax.random.key(seed)
        start, cpu = time.perf_counter(), time.process_time()
        ts, _ = jax.block_until_ready(self.compiled(key))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # untimed: rejax's own evaluation of the final policy (128 episodes)
        final = float(self.evaluate(ts, jax.random.fold_in(key, 1)))
        return seconds, cpu, int(ts.global_step), final


def worker_main(kind, algo, config):
    out = sys.stdout
    sys.stdout = sys.stderr
    from importlib.metadata import version

    import jax

    worker = {"ours": OursWorker, "rejax": RejaxWorker}[kind](config, algo)
    info = {"jax": jax.__version__, "device": str(jax.devices()[0])}
    for package in ("jaxlib", "flax", "optax", "gymnax") + (
        ("rejax",) if kind == "rejax" else ()
    ):
        info[package] = version(package)
    print(json.dumps(info), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "compile":
            reply = {"seconds": worker.compile()}
        elif cmd["op"] == "run":
            seconds, cpu, steps, final = worker.run(cmd["seed"])
            reply = {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "env_steps": steps,
                "final_return": final,
            }
        else:
            break
        print(json.dumps(reply), file=out, flush=True)


def rejax_python(args) -> str:
    if args.rejax_python:
        return args.rejax_python
    venv = VENVS / "rejax"
    python = venv / "bin" / "python"
    if not python.exists():
        from importlib.metadata import version

        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = [f"jax=={version('jax')}", f"jaxlib=={version('jaxlib')}"]
        pins.append(f"flax=={version('flax')}")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *REJAX_PACKAGES, *pins],
            check=True,
        )
    return str(python)


# --------------------------------------------------------------------- learning


def learning(config, seeds):
    import jax
    import numpy as np

    from convergence_jax.offline.evaluate import evaluate_policy
    from convergence_jax.rl.sac import make_sac
    from convergence_jax.rl.td3 import make_td3

    sac_config, td3_config = _ours_configs(config)
    out = {}
    for name, program in (("sac", make_sac(sac_config)), ("td3", make_td3(td3_config))):
        cfg = program.config

        def train(key, program=program, cfg=cfg, name=name):
            state = program.init(key)
            state, metrics = program.run(state, None, cfg.num_updates)
            if name == "sac":
                act = lambda obs, k: program.policy(state.params, obs, k, True)  # noqa: E731
            else:
                act = lambda obs, k: program.policy(state.params, obs, k)  # noqa: E731
            returns = evaluate_policy(
                jax.random.fold_in(key, 7), cfg.env_id, act, EVAL_EPISODES
            )
            return metrics["episode_return"], metrics["env_steps"], returns

        keys = jax.random.split(jax.random.key(0), seeds)
        start = time.perf_counter()
        compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        ret, steps, evals = jax.device_get(jax.block_until_ready(compiled(keys)))
        run_s = time.perf_counter() - start
        curves, final = [], []
        for s in range(seeds):
            done = ~np.isnan(ret[s])
            episode_returns = ret[s][done]
            curves.append(
                {
                    "env_steps": steps[s][done].tolist(),
                    "episode_return": episode_returns.tolist(),
                }
            )
            final.append(float(episode_returns[-FINAL_EPISODES:].mean()))
        eval_means = [float(e.mean()) for e in evals]
        out[name] = {
            "seeds": seeds,
            "compile_seconds": compile_s,
            "run_seconds": run_s,
            "env_steps_per_seed": int(steps[0][-1]),
            "final_train_return": final,
            "final_train_return_mean": float(np.mean(final)),
            "eval_return": eval_means,
            "eval_return_mean": float(np.mean(eval_means)),
            "seeds_at_bar_train": int(sum(f >= BAR for f in final)),
            "seeds_at_bar_eval": int(sum(e >= BAR for e in eval_means)),
            "curves": curves,
        }
        print(
            f"{name}: final train {np.round(final, 1)} eval {np.round(eval_means, 1)} "
            f"({run_s:.1f} s, compile {compile_s:.1f} s)",
            flush=True,
        )
    return out


def plot(result, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name in zip(axes, ("sac", "td3"), strict=True):
        r = result["learning"][name]
        for s, curve in enumerate(r["curves"]):
            ax.plot(
                curve["env_steps"], curve["episode_return"], lw=1, label=f"seed {s}"
            )
        ax.axhline(BAR, color="k", ls="--", lw=0.8, label=f"bar {BAR:.0f}")
        ax.set_title(f"{name.upper()} on Pendulum-v1 ({r['seeds']} vmapped seeds)")
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training episode return")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------- speed


def speed(args, algo):
    config = args.config
    env = worker_env(JAX_PLATFORMS="cpu")
    script = str(Path(__file__).resolve())
    argv = ["--worker-algo", algo, "--config", json.dumps(config)]
    workers = {
        "ours": JsonWorker([sys.executable, script, "--worker", "ours", *argv], env),
        "rejax": JsonWorker(
            [rejax_python(args), script, "--worker", "rejax", *argv], env
        ),
    }
    try:
        compile_s = {n: w.ask(op="compile")["seconds"] for n, w in workers.items()}
        first = {n: w.ask(op="run", seed=1000) for n, w in workers.items()}  # untimed
        replies = {n: [] for n in workers}

        def contender(name):
            def run(r):
                reply = workers[name].ask(op="run", seed=r)
                replies[name].append(reply)
                return reply

            return run

        timing = alternate({n: contender(n) for n in workers}, args.rounds)
        versions = {n: w.info for n, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    rates = {}
    for name in workers:
        steps = [rep["env_steps"] for rep in replies[name]]
        secs = [rep["seconds"] for rep in replies[name]]
        rate = [s / t for s, t in zip(steps, secs, strict=True)]
        rates[name] = {
            "min": min(rate),
            "median": sorted(rate)[len(rate) // 2],
            "max": max(rate),
            "values": rate,
            "env_steps": steps[0],
            "final_return": [rep["final_return"] for rep in replies[name]],
            "untimed_first_run_seconds": first[name]["seconds"],
        }
    return {
        "compile_seconds": compile_s,
        "rates": rates,
        "timing": timing,
        "ours_vs_rejax": speedup(timing, "ours", "rejax"),
        "versions": versions,
    }


# --------------------------------------------------------------------- report


def markdown(result) -> str:
    c, m = result["config"], result["machine"]
    lines = [
        "# SAC and TD3 on Pendulum-v1: learning, and speed vs rejax",
        "",
        f"Configuration (both libraries, both algorithms): {c['env_id']}, "
        f"{c['num_envs']} environment, {c['total_timesteps']:,} environment steps, "
        f"one gradient step per environment step, batch {c['batch_size']}, buffer "
        f"{c['buffer_size']:,}, {'-'.join(map(str, c['hidden_sizes']))} "
        f"{c['activation']} (swish) MLPs, Adam {c['learning_rate']} for every "
        f"network (and SAC's log alpha), gamma {c['gamma']}, tau {c['tau']} "
        f"(Polyak), learning from step {c['learning_starts']:,}. SAC: twin critics, "
        "automatic entropy tuning (target -action_dim, alpha 1 at start). TD3: "
        f"policy delay {c['policy_delay']}, exploration noise "
        f"{c['exploration_noise']}, target noise {c['target_noise']} clipped to "
        f"{c['target_noise_clip']} (unit box).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU only. 1-minute load at "
        f"start / end: {result['load_average_start'][0]:.2f} / "
        f"{result['load_average_end'][0]:.2f} (a shared machine; each round's "
        "load is below).",
        "",
        "## Learning (ours)",
        "",
        "| algorithm | seeds | final training return per seed | mean | "
        "evaluation return per seed (16 episodes, deterministic) | mean | seeds >= "
        f"{BAR:.0f} (train / eval) | run (s) | compile (s) |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in result.get("learning", {}).items():
        per = ", ".join(f"{x:.1f}" for x in r["final_train_return"])
        ev = ", ".join(f"{x:.1f}" for x in r["eval_return"])
        lines.append(
            f"| {name.upper()} | {r['seeds']} | {per} | "
            f"{r['final_train_return_mean']:.1f} | {ev} | {r['eval_return_mean']:.1f} "
            f"| {r['seeds_at_bar_train']} / {r['seeds_at_bar_eval']} | "
            f"{r['run_seconds']:.1f} | {r['compile_seconds']:.1f} |"
        )
    lines += [
        "",
        f"Final training return: mean of each seed's last {FINAL_EPISODES} training "
        "episodes (200 steps each; SAC samples its policy, TD3 adds its exploration "
        "noise). Evaluation: the final policy's mode (SAC) or the deterministic "
        f"actor (TD3) on {EVAL_EPISODES} fresh episodes. Seeds run as one vmapped "
        f"call. Curves: `{NAME}.png`.",
    ]
    for algo, s in result["speed"].items():
        r = s["rates"]
        v = s["versions"]
        lines += [
            "",
            f"## Speed: {algo.upper()}, one seed a run (steady state)",
            "",
            f"{len(s['timing']['rounds'])} alternating rounds after one untimed run "
            "each; each library in its own process. Ours: jax "
            f"{v['ours']['jax']}, flax {v['ours']['flax']}, gymnax "
            f"{v['ours']['gymnax']}. rejax {v['rejax']['rejax']}: jax "
            f"{v['rejax']['jax']}, flax {v['rejax']['flax']}, gymnax "
            f"{v['rejax']['gymnax']}.",
            "",
            "| library | env steps / s: min | median | max | compile (s) | final "
            "return (median over rounds) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, label in (("ours", "convergence_jax.rl"), ("rejax", "rejax")):
            f = r[name]
            finals = sorted(f["final_return"])
            lines.append(
                f"| {label} | {f['min']:,.0f} | {f['median']:,.0f} | "
                f"{f['max']:,.0f} | {s['compile_seconds'][name]:.1f} | "
                f"{finals[len(finals) // 2]:.1f} |"
            )
        lines += [
            "",
            f"ours / rejax (time per run): {fmt_speedup(s['ours_vs_rejax'])}.",
            "",
            "| round | load (1 min) | order | ours (s) | rejax (s) |",
            "|---:|---:|---|---:|---:|",
        ]
        for i, rec in enumerate(s["timing"]["rounds"]):
            lines.append(
                f"| {i} | {rec['load']:.2f} | {', '.join(rec['order'])} | "
                f"{rec['ours']:.2f} | {rec['rejax']:.2f} |"
            )
        lines += [
            "",
            "Final return in the speed runs: ours, mean of the last "
            f"{FINAL_EPISODES} training episodes; rejax, its own evaluation of the "
            "final policy (128 episodes), untimed.",
        ]
    lines += ["", "## What differs", ""]
    lines += [f"- {d}" for d in result["differences"]]
    return "\n".join(lines) + "\n"


def write_report(result, out: Path, write: bool):
    text = markdown(result)
    print(text)
    if write:
        (out / f"{NAME}.md").write_text(text)
        if "learning" in result:
            plot(result, out / f"{NAME}.png")
        print(f"wrote {out / NAME}.json, .md and .png")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "rejax"], help=argparse.SUPPRESS)
    p.add_argument("--worker-algo", default="sac", help=argparse.SUPPRESS)
    p.add_argument("--config", type=json.loads, default=CONFIG, help=argparse.SUPPRESS)
    p.add_argument("--total-timesteps", type=int, default=CONFIG["total_timesteps"])
    p.add_argument("--seeds", type=int, default=4, help="vmapped seeds (learning)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (speed)")
    p.add_argument("--speed-timesteps", type=int, default=4_000)
    p.add_argument("--td3", action="store_true", help="also time TD3 vs rejax")
    p.add_argument("--skip-learning", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--rejax-python", help="interpreter with rejax and gymnax 0.0.9")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny smoke run, no files")
    p.add_argument(
        "--markdown-from", type=Path, help="write .md and .png from this results .json"
    )
    return p.parse_args(argv)


def main(args):
    def save():  # after every part, so a later failure loses nothing measured
        if not args.quick:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")

    result = {
        "machine": machine_info(),
        "load_average_start": list(os.getloadavg()),
        "config": dict(args.config),
        "differences": differences(args.config),
    }
    if not args.skip_learning:
        result["learning"] = learning(args.config, args.seeds)
        save()
    result["speed"] = {}
    if not args.skip_speed:
        speed_args = argparse.Namespace(**vars(args))
        speed_args.config = dict(
            args.config,
            total_timesteps=args.speed_timesteps,
            buffer_size=min(args.config["buffer_size"], args.speed_timesteps),
        )
        result["speed_config"] = speed_args.config
        for algo in ("sac", "td3") if args.td3 else ("sac",):
            result["speed"][algo] = speed(speed_args, algo)
            s = result["speed"][algo]
            print(algo, fmt_speedup(s["ours_vs_rejax"]), flush=True)
            save()
    result["load_average_end"] = list(os.getloadavg())
    return result


if __name__ == "__main__":
    args = parse()
    if args.worker:
        worker_main(args.worker, args.worker_algo, args.config)
        sys.exit(0)
    if args.markdown_from:
        write_report(json.loads(args.markdown_from.read_text()), args.out, True)
        sys.exit(0)
    if args.quick:
        args.total_timesteps, args.speed_timesteps = 1_600, 1_400
        args.seeds, args.rounds = 2, 2
        args.config = dict(CONFIG, learning_starts=400)
    args.config = dict(
        args.config,
        total_timesteps=args.total_timesteps,
        buffer_size=min(args.config["buffer_size"], args.total_timesteps),
    )
    result = main(args)
    if not args.quick:  # the measurements first, in case the report fails
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, args.out, write=not args.quick)
