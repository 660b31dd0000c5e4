"""Logged conversations: offline training of the token policy from a JSONL log
(reward-filtered behaviour cloning and advantage-weighted regression), and
hybrid offline -> online multi-turn GRPO, on the customer-service TaskEnv.

    python benchmarks/conversations_offline.py --stage warm     # behaviour policy
    python benchmarks/conversations_offline.py --stage offline  # log + BC / AWR
    python benchmarks/conversations_offline.py --stage online   # hybrid vs online
    python benchmarks/conversations_offline.py --stage report   # json / md / png

Stages cache their outputs under ``--cache`` so that each stays a bounded run.

1. **Behaviour policy** (`warm`): a partly-trained agent -- SFT on scripted-
   expert demonstrations (`multiturn.make_multiturn_sft`), stopped at a low
   greedy success on training scenarios.
2. **The log** (`offline`): the behaviour policy plays training scenarios,
   each ``group_size`` times at each of several sampling temperatures (mixed
   quality); the conversations with their 0/1 rewards and metadata go to a
   JSONL file (`agents.offline.log_conversations`, `save_jsonl`), which is read
   back with `ConversationDataset.from_jsonl`.
3. **Offline training** from the behaviour policy's parameters, on the log only,
   ``offline_steps`` steps per seed (seeds vmapped): reward-filtered BC (the
   conversations of reward >= ``bc_min_reward``) and AWR on tokens (weights
   ``min(exp(beta (R - b)), max_weight)``, ``b`` the per-scenario mean reward).
   Evaluated greedy on held-out scenarios (held-out orders and users) against
   the behaviour data's mean reward (the behaviour policy sampled at the same
   temperatures on the same held-out scenarios) and the behaviour policy
   greedy.
4. **Online** (`online`): multi-turn GRPO from the behaviour policy
   (online only) vs the hybrid -- the filtered-BC parameters of step 3, then
   GRPO with the filtered log replayed at weight ``offline_weight`` each update
   (`agents.offline.make_hybrid`). Success on held-out scenarios every
   ``eval_every`` steps; the bar: the hybrid reaches the online run's final
   success in fewer online conversations.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from _machine import machine_info  # noqa: E402

from convergence_jax import llm, lm  # noqa: E402
from convergence_jax.agents import multiturn as mt  # noqa: E402
from convergence_jax.agents import offline  # noqa: E402
from convergence_jax.agents.randomizer import DomainRandomizer  # noqa: E402
from convergence_jax.agents.task_env import customer_service_env  # noqa: E402
from convergence_jax.agents.trajectory import save_jsonl  # noqa: E402


@dataclass(frozen=True)
class Args:
    """Logged conversations: offline BC / AWR and hybrid offline -> online."""

    stage: str = "all"
    """warm, offline, online, report or all."""
    cache: str = "/tmp/cj_conv"
    """Where stages keep their outputs (params, the JSONL log, curves)."""
    num_seeds: int = 3
    """Seeds of the offline and online runs (vmapped)."""
    max_turns: int = 3
    """Agent turns per conversation (3: ask, lookup, act; no spare turn)."""
    strength: float = 0.92
    """DomainRandomizer strength of the simulated users."""
    num_demos: int = 4096
    """Expert demonstrations of the behaviour policy's SFT."""
    warm_target: float = 0.15
    """Stop the behaviour policy's SFT at this greedy training success."""
    warm_max_steps: int = 400
    """Give up the behaviour policy's SFT here."""
    log_scenarios: int = 384
    """Training scenarios in the log."""
    log_group: int = 2
    """Conversations per scenario and temperature in the log."""
    temperatures: tuple[float, ...] = (0.7, 1.0, 1.3)
    """The behaviour policy's sampling temperatures (mixed quality)."""
    bc_min_reward: float = 1.0
    """Reward-filtered BC keeps the conversations of at least this reward."""
    offline_steps: int = 100
    """Offline AdamW steps per seed and method."""
    offline_batch: int = 16
    """Conversations per offline step."""
    offline_lr: float = 1e-3
    """Offline step size (BC and AWR)."""
    awr_beta: float = 3.0
    """AWR's inverse temperature."""
    awr_max_weight: float = 10.0
    """AWR's weight clip."""
    eval_scenarios: int = 192
    """Held-out (and training) scenarios per final evaluation."""
    online_steps: int = 30
    """Multi-turn GRPO steps per seed (online only and hybrid)."""
    num_prompts: int = 4
    """Scenarios per GRPO step."""
    group_size: int = 4
    """Conversations per scenario (G)."""
    loss: str = "dr_grpo"
    """The online loss (as benchmarks/agents_learning.py)."""
    learning_rate: float = 2e-4
    """Online Adam step size (as benchmarks/agents_learning.py)."""
    temperature: float = 0.7
    """Online sampling temperature (as benchmarks/agents_learning.py)."""
    offline_weight: float = 0.3
    """The hybrid's weight on the replayed filtered log in each online update."""
    eval_every: int = 10
    """Online steps between held-out evaluations."""
    curve_scenarios: int = 96
    """Held-out scenarios per curve point."""
    out: str = "conversations_offline"
    """Output name under benchmarks/results/."""


def make_env(args: Args):
    return customer_service_env(
        lm.ByteTokenizer(),
        DomainRandomizer.customer_service(strength=args.strength),
        max_turns=args.max_turns,
    )


def model_config(env):
    tok = env.tokenizer
    return lm.LMConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4,
        head_dim=16,
        rope_theta=1000.0,
        max_position_embeddings=env.sequence_length,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )


def stage_warm(args: Args, cache: Path) -> None:
    env = make_env(args)
    mc = model_config(env)
    sft = mt.make_multiturn_sft(mc, env, num_demos=args.num_demos, batch_size=32)
    t0 = time.time()
    state, probe = jax.jit(
        lambda s: sft.run_until(s, args.warm_target, args.warm_max_steps)
    )(sft.init(jax.random.key(100)))
    jax.block_until_ready(state)
    out = {
        "params": jax.tree.map(np.asarray, state.params),
        "steps": int(state.step),
        "probe_success": float(probe),
        "seconds": time.time() - t0,
    }
    (cache / "warm.pkl").write_bytes(pickle.dumps(out))
    print("warm", {k: v for k, v in out.items() if k != "params"}, flush=True)


def load(cache: Path, name: str):
    return pickle.loads((cache / name).read_bytes())


def evaluate_many(mc, env, params, held_out: bool, num: int):
    """Greedy success of a stack of params ``[S]`` (the `multiturn` evaluation
    scenarios)."""
    scenarios = mt._eval_scenarios(env, num, held_out)
    return np.asarray(
        jax.jit(
            jax.vmap(
                lambda p: mt._success_rate(
                    p, mc, env, scenarios, jax.random.key(1), 0.0
                )
            )
        )(params)
    )


def stage_offline(args: Args, cache: Path) -> None:
    env = make_env(args)
    mc = model_config(env)
    warm = load(cache, "warm.pkl")
    behaviour = jax.tree.map(jnp.asarray, warm["params"])
    part = cache / "offline_part.pkl"
    # Resumable: each piece is saved as it finishes (bounded locked runs).
    out: dict = load(cache, part.name) if part.exists() else {}
    params_out = out.pop("params", {})

    def save_part():
        part.write_bytes(pickle.dumps({**out, "params": params_out}))

    path = cache / "log.jsonl"
    if "behaviour" not in out:
        t0 = time.time()
        logged = offline.log_conversations(
            behaviour,
            mc,
            env,
            jax.random.key(7),
            num_scenarios=args.log_scenarios,
            group_size=args.log_group,
            temperatures=args.temperatures,
            policy="sft-behaviour",
        )
        path = cache / "log.jsonl"
        save_jsonl(path, logged)
        out["log_seconds"] = time.time() - t0
        data = offline.ConversationDataset.from_jsonl(path)
        fitting = data.fitting(env.tokenizer, env.sequence_length)
        out["log"] = {
            "rows": len(data),
            "skipped": len(data.report.skipped),
            "too_long": len(data) - len(fitting),
            "mean_reward": float(data.rewards.mean()),
            "by_temperature": {
                str(t): float(
                    np.mean(
                        [
                            x.final_reward
                            for x in logged
                            if x.metadata["temperature"] == t
                        ]
                    )
                )
                for t in args.temperatures
            },
            "bytes": path.stat().st_size,
        }
        print("log", out["log"], flush=True)

        # -- the behaviour policy on held-out scenarios --
        held_log = offline.log_conversations(
            behaviour,
            mc,
            env,
            jax.random.key(8),
            num_scenarios=args.eval_scenarios,
            group_size=1,
            temperatures=args.temperatures,
            held_out=True,
        )
        out["behaviour"] = {
            "held_out_sampled_reward": float(
                np.mean([x.final_reward for x in held_log])
            ),
            "held_out_greedy": float(
                evaluate_many(
                    mc,
                    env,
                    jax.tree.map(lambda x: x[None], behaviour),
                    True,
                    args.eval_scenarios,
                )[0]
            ),
            "train_greedy": float(
                evaluate_many(
                    mc,
                    env,
                    jax.tree.map(lambda x: x[None], behaviour),
                    False,
                    args.eval_scenarios,
                )[0]
            ),
        }
        print("behaviour", out["behaviour"], flush=True)
        save_part()
    data = offline.ConversationDataset.from_jsonl(path)
    fitting = data.fitting(env.tokenizer, env.sequence_length)

    # -- offline training, seeds vmapped --
    good = fitting.filter(min_reward=args.bc_min_reward)
    hp = offline.OfflineHParams.create(
        learning_rate=args.offline_lr,
        beta=args.awr_beta,
        max_weight=args.awr_max_weight,
    )
    trainers = {
        "awr": offline.make_offline_trainer(
            mc,
            fitting.to_rows(env.tokenizer, env.sequence_length),
            method="awr",
            batch_size=args.offline_batch,
            baseline=fitting.baselines("scenario"),
            hparams=hp,
        ),
        "bc": offline.make_offline_trainer(
            mc,
            good.to_rows(env.tokenizer, env.sequence_length),
            method="bc",
            batch_size=args.offline_batch,
            hparams=hp,
        ),
    }
    out["bc_rows"] = len(good)
    out["awr_rows"] = len(fitting)
    out["awr_mean_weight"] = float(trainers["awr"].weights().mean())
    keys = jnp.stack([jax.random.key(s) for s in range(args.num_seeds)])
    for name, trainer in trainers.items():
        if name in params_out:
            continue
        t = time.time()
        state = jax.vmap(lambda k, tr=trainer: tr.init(k, behaviour))(keys)
        state, metrics = jax.jit(
            jax.vmap(lambda s, tr=trainer: tr.run(s, None, args.offline_steps))
        )(state)
        jax.block_until_ready(state)
        seconds = time.time() - t
        held = evaluate_many(mc, env, state.params, True, args.eval_scenarios)
        train = evaluate_many(mc, env, state.params, False, args.eval_scenarios)
        out[name] = {
            "held_out": held.tolist(),
            "train": train.tolist(),
            "loss_first": np.asarray(metrics["loss"][:, :10].mean(1)).tolist(),
            "loss_last": np.asarray(metrics["loss"][:, -10:].mean(1)).tolist(),
            "seconds": seconds,
        }
        params_out[name] = jax.tree.map(np.asarray, state.params)
        save_part()
        print(name, out[name], flush=True)
    (cache / "offline.pkl").write_bytes(pickle.dumps({"out": out, **params_out}))


def stage_online(args: Args, cache: Path) -> None:
    env = make_env(args)
    mc = model_config(env)
    warm = load(cache, "warm.pkl")
    off = load(cache, "offline.pkl")
    behaviour = jax.tree.map(jnp.asarray, warm["params"])
    data = offline.ConversationDataset.from_jsonl(cache / "log.jsonl")
    good = data.fitting(env.tokenizer, env.sequence_length).filter(
        min_reward=args.bc_min_reward
    )
    rows = good.to_rows(env.tokenizer, env.sequence_length)
    config = llm.GRPOConfig(
        loss=args.loss,
        num_prompts=args.num_prompts,
        group_size=args.group_size,
        learning_rate=args.learning_rate,
        temperature=args.temperature,
    )
    hybrid = offline.make_hybrid(
        config, mc, env, rows, method="bc", batch_size=args.offline_batch
    )
    program = hybrid.online
    s = args.num_seeds
    keys = jnp.stack([jax.random.key(1000 + i) for i in range(s)])
    starts = {
        # online only: GRPO from the behaviour policy, no offline term
        "online": (jax.tree.map(lambda x: jnp.stack([x] * s), behaviour), 0.0),
        # hybrid: the offline (filtered-BC) params, then GRPO + the replayed log
        "hybrid": (jax.tree.map(jnp.asarray, off["bc"]), args.offline_weight),
    }
    run = jax.jit(
        jax.vmap(lambda st, pen: program.run(st, None, args.eval_every, penalty=pen))
    )
    curves, seconds = {}, {}
    for name, (params, weight) in starts.items():
        t = time.time()
        state = jax.vmap(program.init)(keys, params)
        penalty = jax.vmap(lambda p, w=weight: hybrid.penalty(p, w))(params)
        points = [evaluate_many(mc, env, state.params, True, args.curve_scenarios)]
        sampled = []
        for _ in range(args.online_steps // args.eval_every):
            state, metrics = run(state, penalty)
            points.append(
                evaluate_many(mc, env, state.params, True, args.curve_scenarios)
            )
            sampled.append(np.asarray(metrics["success"]).mean(1))
            print(name, len(points) - 1, points[-1], sampled[-1], flush=True)
        curves[name] = {
            "held_out": np.stack(points).tolist(),
            "sampled_success": np.stack(sampled).tolist(),
        }
        seconds[name] = time.time() - t
    (cache / "online.pkl").write_bytes(
        pickle.dumps({"curves": curves, "seconds": seconds})
    )


def first_reach(curve: np.ndarray, target: float) -> int:
    """The first curve point at or above ``target`` (len if never)."""
    hits = np.flatnonzero(curve >= target - 1e-9)
    return int(hits[0]) if len(hits) else len(curve)


def plot(path: Path, result: dict, args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    beh = result["behaviour"]
    names = ["behaviour data\n(sampled)", "behaviour\n(greedy)", "filtered BC", "AWR"]
    values = [
        [beh["held_out_sampled_reward"]],
        [beh["held_out_greedy"]],
        result["bc"]["held_out"],
        result["awr"]["held_out"],
    ]
    for i, v in enumerate(values):
        left.bar(i, np.mean(v), color=f"C{i}", alpha=0.6)
        left.plot([i] * len(v), v, "k.", ms=8)
    left.set_xticks(range(len(names)), names, fontsize=8)
    left.set_ylabel("held-out success / mean reward")
    left.set_title(f"offline, {args.offline_steps} steps, {args.num_seeds} seeds")
    per_step = args.num_prompts * args.group_size
    for name, color in (("online", "C0"), ("hybrid", "C3")):
        curve = np.asarray(result["online"][name]["held_out"])
        x = np.arange(len(curve)) * args.eval_every * per_step
        for seed in range(curve.shape[1]):
            right.plot(x, curve[:, seed], color=color, alpha=0.3, lw=1)
        label = (
            "online GRPO from the behaviour policy"
            if name == "online"
            else (
                f"hybrid: filtered BC, then GRPO + log replay (w={args.offline_weight})"
            )
        )
        right.plot(x, curve.mean(1), color=color, lw=2, label=label)
    right.set_xlabel("online conversations")
    right.set_ylabel("greedy held-out success")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    right.set_title("hybrid offline -> online vs online only")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage_report(args: Args, cache: Path) -> None:
    info = machine_info()
    warm = load(cache, "warm.pkl")
    off = load(cache, "offline.pkl")["out"]
    online = load(cache, "online.pkl")
    result = {
        "args": asdict(args),
        "machine": {**info, "load_at_end": os.getloadavg()[0]},
        "warm": {k: v for k, v in warm.items() if k != "params"},
        **off,
        "online": {**online["curves"], "seconds": online["seconds"]},
    }
    beh = off["behaviour"]["held_out_sampled_reward"]
    offline_pass = {
        m: bool(np.all(np.asarray(off[m]["held_out"]) > beh)) for m in ("bc", "awr")
    }
    per_step = args.num_prompts * args.group_size
    on = np.asarray(online["curves"]["online"]["held_out"])
    hy = np.asarray(online["curves"]["hybrid"]["held_out"])
    seeds = []
    for s in range(on.shape[1]):
        target = on[-1, s]
        on_at = first_reach(on[:, s], target)
        hy_at = first_reach(hy[:, s], target)
        seeds.append(
            {
                "online_final": float(target),
                "online_conversations": on_at * args.eval_every * per_step,
                "hybrid_conversations": (
                    hy_at * args.eval_every * per_step if hy_at < len(hy) else None
                ),
                "hybrid_final": float(hy[-1, s]),
                "passed": bool(hy_at < on_at),
            }
        )
    result["hybrid_vs_online"] = seeds
    result["passed"] = {
        "bc_beats_behaviour": offline_pass["bc"],
        "awr_beats_behaviour": offline_pass["awr"],
        "hybrid_fewer_conversations": all(x["passed"] for x in seeds),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(RESULTS / f"{args.out}.png", result, args)

    def pct(x):
        return f"{100 * x:.1f}%"

    def spread(v):
        v = np.asarray(v)
        return (
            f"{pct(v.mean())} (min {pct(v.min())}, median {pct(np.median(v))}, "
            f"max {pct(v.max())})"
        )

    log = off["log"]
    md = [
        "# Logged conversations: offline BC / AWR and hybrid offline -> online",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, CPU only; 1-minute load "
        f"{info['load_average_start']:.2f} at the report. Written by "
        "`benchmarks/conversations_offline.py` (customer-service TaskEnv, "
        f"{args.max_turns} agent turns, 2-layer width-64 model, byte tokenizer).",
        "",
        f"**Behaviour policy**: SFT on {args.num_demos} scripted-expert "
        f"demonstrations, stopped after {warm['steps']} steps (greedy training "
        f"success {pct(warm['probe_success'])} on the probe set). **The log**: it "
        f"played {args.log_scenarios} training scenarios {args.log_group} times at "
        f"each temperature {list(args.temperatures)}: {log['rows']} conversations "
        f"to JSONL ({log['bytes'] / 1e6:.1f} MB), read back with "
        f"`ConversationDataset.from_jsonl` ({log['skipped']} bad rows; "
        f"{log['too_long']} left out as longer than the context once rendered as "
        f"text), mean reward {pct(log['mean_reward'])} ("
        + ", ".join(f"T={t}: {pct(v)}" for t, v in log["by_temperature"].items())
        + ").",
        "",
        f"**Offline** (from the behaviour policy's parameters, the log only, "
        f"{args.offline_steps} AdamW steps of {args.offline_batch} conversations, "
        f"lr {args.offline_lr}, {args.num_seeds} seeds): filtered BC on the "
        f"{off['bc_rows']} conversations of reward >= {args.bc_min_reward}; AWR on "
        f"all {off['awr_rows']}, weights min(exp({args.awr_beta} (R - b)), "
        f"{args.awr_max_weight}), b = the scenario's mean reward (mean weight "
        f"{off['awr_mean_weight']:.2f}). Greedy, {args.eval_scenarios} held-out "
        "scenarios (held-out orders and users).",
        "",
        "| policy | held-out success (mean over seeds; min / median / max) | "
        "train success |",
        "|---|---|---|",
        f"| behaviour data (sampled at the log's temperatures, held-out "
        f"scenarios) | {pct(beh)} | {pct(log['mean_reward'])} (the log) |",
        f"| behaviour policy, greedy | {pct(off['behaviour']['held_out_greedy'])} "
        f"| {pct(off['behaviour']['train_greedy'])} |",
        f"| reward-filtered BC | {spread(off['bc']['held_out'])} | "
        f"{spread(off['bc']['train'])} |",
        f"| AWR | {spread(off['awr']['held_out'])} | {spread(off['awr']['train'])} |",
        "",
        f"Bar 1 (each seed above the behaviour data's held-out mean reward "
        f"{pct(beh)}): filtered BC **{'passed' if offline_pass['bc'] else 'FAILED'}**"
        f", AWR **{'passed' if offline_pass['awr'] else 'FAILED'}**.",
        "",
        f"**Online** ({args.loss}, {args.num_prompts} scenarios x {args.group_size} "
        f"conversations per step, lr {args.learning_rate}, temperature "
        f"{args.temperature}, {args.online_steps} steps = "
        f"{args.online_steps * per_step} conversations per seed): online only "
        "starts from the behaviour policy; the hybrid from each seed's "
        f"filtered-BC parameters, with the filtered log replayed (NLL of "
        f"{per_step} rows per update at weight {args.offline_weight}). Greedy "
        f"held-out success on {args.curve_scenarios} scenarios every "
        f"{args.eval_every} steps.",
        "",
        "| seed | online final | online reaches it after | hybrid reaches it after "
        "| hybrid final |",
        "|---|---|---|---|---|",
    ]
    for s, x in enumerate(seeds):
        hyc = x["hybrid_conversations"]
        md.append(
            f"| {s} | {pct(x['online_final'])} | {x['online_conversations']} conv. | "
            f"{'never' if hyc is None else f'{hyc} conv.'} | {pct(x['hybrid_final'])} |"
        )
    md += [
        "",
        "Bar 2 (the hybrid reaches the online run's final held-out success in "
        "fewer online conversations, every seed): "
        f"**{'passed' if result['passed']['hybrid_fewer_conversations'] else 'FAILED'}"
        "**.",
        "",
        "Time: log "
        + (
            "not recorded (its first run was cut by its time limit after the log "
            "was written; the log and the behaviour figures are that run's)"
            if off["log_seconds"] is None
            else f"{off['log_seconds']:.0f} s"
        )
        + f"; offline BC {off['bc']['seconds']:.0f}"
        f" s, AWR {off['awr']['seconds']:.0f} s ({args.num_seeds} seeds vmapped, "
        f"with compilation); online {online['seconds']['online']:.0f} s, hybrid "
        f"{online['seconds']['hybrid']:.0f} s (with evaluations). Run in stages "
        "under `/tmp/cj-heavy.lock` on a shared machine; the success figures do "
        "not depend on load.",
        "",
        f"![curves]({args.out}.png)",
    ]
    (RESULTS / f"{args.out}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main(args: Args) -> None:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.stage in ("warm", "all"):
        stage_warm(args, cache)
    if args.stage in ("offline", "all"):
        stage_offline(args, cache)
    if args.stage in ("online", "all"):
        stage_online(args, cache)
    if args.stage in ("report", "all"):
        stage_report(args, cache)


if __name__ == "__main__":
    main(tyro.cli(Args))
