"""The forgetting bar of `convergence_jax.agents.continual`: train task A, then task
B, and measure how much of A each method keeps.

    python benchmarks/continual_forgetting.py            # the committed run
    python benchmarks/continual_forgetting.py --seeds 1 --methods sequential ewc

One model and one phase A for every method: a 2-layer, width-64 transformer
(`llm.AdditionWarmup`'s shape: 4 heads, rotary base 100, ByteTokenizer) trained
with SFT on task A for ``steps_a`` steps, 3 vmapped seeds. From that state each
method trains ``steps_b`` steps on task B: plain sequential fine-tuning, replay
(a fraction ``replay_ratio`` of each batch from A's ring buffer), LwF (KL to the
policy frozen at the switch, weight ``beta``) and EWC (diagonal Fisher of A,
weight ``lambda``; ``ewc`` from the data's targets, ``ewc_model`` from the model's
own samples). Each method's number is swept over a grid, every value
and seed vmapped in one compiled program; the value reported is chosen on
*validation* problems (``fold_in(eval_key(0), 1)``): among the values where every
seed reaches task B's level on validation, the one with the smallest mean drop of
A; the figures reported are held-out (``llm.eval_key(0)``, a stream no training
or selection step draws).

The tasks: sorting4 (``"sort 9,0,2,3="`` -> ``"0239"``) then reverse4 over the
letters a-h (``"reverse faaf="`` -> ``"faaf"``). Their prompts differ in the
instruction word and in the alphabet, so one model *can* do both (replay keeps
A at >= 92% with B at >= 97%): the tasks do not conflict on any input, which is
the setting continual learning is about. (Tasks sharing prompts would conflict
directly; no method could keep both.)

LwF, in both forms, is the KL to the policy frozen at the switch, weight
``beta``, on task B's inputs only (never A's data — that would be replay):
``lwf`` on B's rows teacher-forced on B's targets,
``beta T^2 sum_t KL(p*_T(.|x, y_B,<t) || p_T(.|x, y_B,<t))`` over B's answer
tokens; ``lwf_frozen`` on the frozen policy's own sampled continuations
``y ~ p*(.|x)`` of B's prompts, ``beta T^2 sum_t KL(p*_T(.|x, y_<t) ||
p_T(.|x, y_<t))`` (a fresh sample every step; the sequence-level KL of Kim &
Rush's distillation, with soft targets). Neither constrains the model on A's
prompts: LwF keeps A only as far as behaving like the frozen model on B's inputs
carries over to A's, and with one output head shared by both tasks, at B's
answer positions the KL asks for the frozen model's (digit) answer where B's loss
asks for letters. ``lwf_old`` is Li & Hoiem's form for one shared head: their
network keeps the old head's outputs on the new data; here the old "head" is A's
prompt format, so the KL (rollout form) is taken on B's inputs written as A's
prompts (``"sort f,a,a,f="``), answered by the frozen policy. It stores and draws
no A row, but it does use A's template (which task a prompt asks for), as a
separate head would.

EWC's empirical Fisher shrinks as a run fits A (its mean differs ~5x between
seeds here), so one ``lambda`` is a weaker penalty in the seed that fit best;
``ewc_norm`` divides each run's Fisher by its mean so that ``lambda`` is relative.

The bar: for replay, LwF and EWC (either Fisher), in every seed, the drop of A's
held-out greedy exact match is at most half the drop of sequential fine-tuning in
that seed, and B's held-out exact match reaches ``b_level``. Writes
``benchmarks/results/continual_forgetting.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT))
from _machine import machine_info  # noqa: E402

from convergence_jax import llm, lm  # noqa: E402
from convergence_jax.agents import continual  # noqa: E402

METHODS = (
    "sequential",
    "replay",
    "lwf",
    "lwf_frozen",
    "lwf_old",
    "ewc",
    "ewc_norm",
    "ewc_model",
)
"""``lwf``: LwF's KL on B's rows as they are (teacher-forced on B's targets);
``lwf_frozen``: on the frozen policy's own continuations of B's prompts
(``lwf_targets="frozen"``); ``lwf_old``: on B's inputs written in A's prompt
format (``continual.template_rows``: ``"sort f,a,a,f="`` for the reverse problem
``faaf``), answered by the frozen policy -- Li & Hoiem's old head on the new
data, with the prompt template as the head. ``ewc``: EWC with the empirical
Fisher (the data's targets); ``ewc_norm``: the same Fisher divided by its
mean (``fisher_normalize``, so ``lambda`` is relative to each run's Fisher
scale); ``ewc_model``: with the model's own samples as targets."""
FIELD = {
    "replay": "replay_ratio",
    "lwf": "lwf_beta",
    "lwf_frozen": "lwf_beta",
    "lwf_old": "lwf_beta",
    "ewc": "ewc_lambda",
    "ewc_norm": "ewc_lambda",
    "ewc_model": "ewc_lambda",
}


@dataclass(frozen=True)
class Args:
    """The forgetting bar: task A, then task B, every method from the same A."""

    task_a: str = "sorting4"
    """Task A: one of ``TASKS``."""
    task_b: str = "reverse4"
    """Task B: one of ``TASKS``."""
    steps_a: int = 800
    """SFT steps on task A."""
    steps_b: int = 1000
    """Steps on task B (every method)."""
    seeds: int = 3
    """Seeds, vmapped."""
    batch_size: int = 32
    learning_rate: float = 3e-3
    """AdamW step size of phase A (50 warmup steps at its start)."""
    learning_rate_b: float = 0.0
    """AdamW step size of phase B, every method (0: ``learning_rate``)."""
    fisher_examples: int = 1024
    """Rows of task A behind EWC's Fisher (a multiple of 64)."""
    replay_ratios: tuple[float, ...] = (0.25, 0.5)
    lwf_betas: tuple[float, ...] = (0.25, 1.0)
    lwf_frozen_betas: tuple[float, ...] = (0.25, 1.0)
    """LwF on the frozen policy's own continuations."""
    lwf_old_betas: tuple[float, ...] = (0.25, 1.0, 4.0)
    """LwF on B's inputs in A's prompt format (``lwf_old``)."""
    lwf_temperature: float = 2.0
    """LwF temperature (Li & Hoiem used 2)."""
    ewc_lambdas: tuple[float, ...] = (1000.0, 1500.0, 2000.0)
    """EWC with the empirical Fisher."""
    ewc_norm_lambdas: tuple[float, ...] = (5.0, 10.0, 20.0)
    """EWC with the empirical Fisher divided by its mean."""
    ewc_model_lambdas: tuple[float, ...] = (30.0, 100.0, 300.0, 1000.0)
    """EWC with the Fisher of the model's own samples."""
    a_level: float = 0.9
    """Task A must reach this held-out exact match in every seed before B."""
    b_level: float = 0.9
    """Task B must reach this held-out exact match (every seed, every method)."""
    eval_problems: int = 512
    out: str = "continual_forgetting"
    """Result file stem under benchmarks/results/ (the test writes elsewhere)."""
    out_dir: str = ""
    """Directory of the results (default: benchmarks/results)."""
    hidden_size: int = 64
    num_layers: int = 2
    methods: tuple[str, ...] = METHODS[:-1]
    """Methods to run; sequential (the reference) first. ``ewc_model`` is left out
    of the committed run (its earlier run, 256 Fisher rows, lambda 30-1000: at
    best 0.49-0.79 of sequential's drop)."""


TOKENIZER = lm.ByteTokenizer()
TASKS = {
    "sorting4": lambda: llm.tasks.sorting(4, TOKENIZER),
    "sorting3": lambda: llm.tasks.sorting(3, TOKENIZER),
    "reverse4": lambda: llm.tasks.reverse(4, TOKENIZER, alphabet="abcdefgh"),
    "reverse3": lambda: llm.tasks.reverse(3, TOKENIZER, alphabet="abcdefgh"),
    "reverse4_digits": lambda: llm.tasks.reverse(4, TOKENIZER, alphabet="0123456789"),
    "copy4": lambda: llm.tasks.copy(4, TOKENIZER, alphabet="abcdefgh"),
    "addition2": lambda: llm.tasks.addition(2, TOKENIZER),
}


# Each task's prompt format and how its inputs are read from its problem: (lead,
# separator, tail, alphabet of problem[0]) as llm.tasks writes them.
TEMPLATES = {
    "sorting4": ("sort ", ",", "=", "0123456789"),
    "sorting3": ("sort ", ",", "=", "0123456789"),
    "reverse4": ("reverse ", "", "=", "abcdefgh"),
    "reverse3": ("reverse ", "", "=", "abcdefgh"),
    "reverse4_digits": ("reverse ", "", "=", "0123456789"),
    "copy4": ("copy ", "", "=", "abcdefgh"),
}


def old_template_rows(args: Args, task_a, task_b) -> continual.DataSource:
    """B's inputs (its problems' characters) in A's prompt format, for
    ``lwf_old``: no row of A, only A's template."""
    for name in (args.task_a, args.task_b):
        if name not in TEMPLATES:
            raise ValueError(f"lwf_old: no prompt template known for {name!r}")
    lead, separator, tail, _ = TEMPLATES[args.task_a]
    ids = jnp.asarray(
        [TOKENIZER.encode(c)[0] for c in TEMPLATES[args.task_b][3]], jnp.int32
    )
    return continual.template_rows(
        lambda key, n: ids[task_b.sample(key, n).problem[0]],
        TOKENIZER,
        lead,
        tail,
        task_a.answer_length,
        separator,
        name=f"{args.task_b}_as_{args.task_a}",
    )


def model_config(args: Args) -> lm.LMConfig:
    heads = 4
    return lm.LMConfig(
        vocab_size=TOKENIZER.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_layers=args.num_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=args.hidden_size // heads,
        rope_theta=100.0,
        max_position_embeddings=64,
        eos_token_id=TOKENIZER.eos_id,
        pad_token_id=TOKENIZER.pad_id,
    )


def grid(args: Args, method: str) -> tuple[float, ...]:
    return {
        "sequential": (0.0,),
        "replay": args.replay_ratios,
        "lwf": args.lwf_betas,
        "lwf_frozen": args.lwf_frozen_betas,
        "lwf_old": args.lwf_old_betas,
        "ewc": args.ewc_lambdas,
        "ewc_norm": args.ewc_norm_lambdas,
        "ewc_model": args.ewc_model_lambdas,
    }[method]


def hparams_of(
    args: Args, method: str, values, learning_rate: float | None = None
) -> continual.ContinualHParams:
    lr = args.learning_rate if learning_rate is None else learning_rate
    sft = llm.SFTHParams.create(learning_rate=lr, warmup_steps=50)

    def one(v):
        kwargs = {"lwf_temperature": args.lwf_temperature}
        if method in FIELD:
            kwargs[FIELD[method]] = v
        return continual.ContinualHParams.create(sft=sft, **kwargs)

    return jax.vmap(one)(jnp.asarray(values, jnp.float32))


def run(args: Args) -> dict:
    task_a, task_b = TASKS[args.task_a](), TASKS[args.task_b]()
    config = model_config(args)
    schedule = [(0, args.steps_a), (1, args.steps_b)]
    programs = {
        m: continual.make_continual(
            config, [task_a, task_b], schedule,
            method={"ewc_model": "ewc", "ewc_norm": "ewc", "lwf_frozen": "lwf",
                    "lwf_old": "lwf"}.get(m, m),
            fisher_normalize=m == "ewc_norm",
            batch_size=args.batch_size,
            fisher_targets="model" if m == "ewc_model" else "data",
            fisher_examples=args.fisher_examples,
            lwf_targets="frozen" if m in ("lwf_frozen", "lwf_old") else "data",
            lwf_rows=old_template_rows(args, task_a, task_b) if m == "lwf_old"
            else None,
        )
        for m in args.methods
    }  # fmt: skip
    lr_b = args.learning_rate_b or args.learning_rate
    keys = {"held_out": llm.eval_key(0), "validation": jax.random.fold_in(
        llm.eval_key(0), 1)}  # fmt: skip
    n = args.eval_problems

    def scores(params):  # one model -> {split: (A, B)}
        return {
            split: jnp.stack(
                [
                    llm.evaluate(k, params, config, t, n)["exact_match"]
                    for t in (task_a, task_b)
                ]
            )  # fmt: skip
            for split, k in keys.items()
        }

    seeds = jnp.stack([jax.random.key(s) for s in range(args.seeds)])
    hp_a = hparams_of(args, "sequential", [0.0])
    hp_a = jax.tree.map(lambda x: x[0], hp_a)
    start = time.perf_counter()
    state = jax.vmap(programs["sequential"].init)(seeds)
    state, metrics_a = jax.jit(
        jax.vmap(lambda s: programs["sequential"].run_phase(s, hp_a, 0))
    )(state)
    before = jax.jit(jax.vmap(scores))(state.params)
    jax.block_until_ready(before)
    seconds_a = time.perf_counter() - start
    a_before = np.asarray(before["held_out"][:, 0])
    print(f"A after phase A: {np.round(a_before, 3)} ({seconds_a:.0f} s)", flush=True)

    methods = {}
    for method in args.methods:
        values = grid(args, method)
        hparams = hparams_of(args, method, values, lr_b)
        program = programs[method]
        phase_b = jax.jit(
            jax.vmap(  # over values
                jax.vmap(
                    lambda s, h, p=program: p.run_phase(s, h, 1), in_axes=(0, None)
                ),
                in_axes=(None, 0),
            )
        )
        start = time.perf_counter()
        out, metrics = phase_b(state, hparams)
        after = jax.jit(jax.vmap(jax.vmap(scores)))(out.params)  # [V, S, 2]
        jax.block_until_ready(after)
        seconds = time.perf_counter() - start
        val = np.asarray(after["validation"])
        test = np.asarray(after["held_out"])
        val_before = np.asarray(before["validation"][:, 0])
        val_drop = val_before[None] - val[..., 0]  # [V, S]
        reaches = (val[..., 1] >= args.b_level).all(-1)
        if reaches.any():
            chosen = int(np.argmin(np.where(reaches, val_drop.mean(-1), np.inf)))
        else:  # none reaches B: report the one that learns B best
            chosen = int(np.argmax(val[..., 1].mean(-1)))
        methods[method] = {
            "field": FIELD.get(method),
            "values": list(values),
            "chosen": values[chosen],
            "chosen_reaches_b_on_validation": bool(reaches[chosen]),
            "seconds": seconds,
            "a_after": test[chosen, :, 0].tolist(),
            "b_after": test[chosen, :, 1].tolist(),
            "a_drop": (a_before - test[chosen, :, 0]).tolist(),
            "sweep": {
                "held_out_a": test[..., 0].tolist(),
                "held_out_b": test[..., 1].tolist(),
                "validation_a": val[..., 0].tolist(),
                "validation_b": val[..., 1].tolist(),
            },
            "final_sft_loss": np.asarray(
                metrics["sft_loss"][:, :, -20:].mean(-1)
            ).tolist(),
        }
        print(
            f"{method}: values {values} -> held-out A {np.round(test[..., 0], 3)}, "
            f"B {np.round(test[..., 1], 3)}; chosen {values[chosen]} "
            f"({seconds:.0f} s)",
            flush=True,
        )
    seq_drop = np.asarray(methods["sequential"]["a_drop"])
    for method, r in methods.items():
        drop = np.asarray(r["a_drop"])
        b_ok = bool((np.asarray(r["b_after"]) >= args.b_level).all())
        r["b_reached"] = b_ok
        if method != "sequential":
            r["drop_over_sequential"] = (drop / np.maximum(seq_drop, 1e-9)).tolist()
            r["bar_met"] = bool((drop <= 0.5 * seq_drop).all() and b_ok)
    return {
        "a_before": a_before.tolist(),
        "a_reached": bool((a_before >= args.a_level).all()),
        "seconds_phase_a": seconds_a,
        "final_sft_loss_a": np.asarray(
            metrics_a["sft_loss"][:, -20:].mean(-1)
        ).tolist(),
        "methods": methods,
    }


def plot(path: Path, result: dict, args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    x = np.arange(len(args.methods))
    before = np.asarray(result["a_before"])
    for i, method in enumerate(args.methods):
        r = result["methods"][method]
        for j, (label, values) in enumerate(
            (("A before", before), ("A after", r["a_after"]), ("B after", r["b_after"]))
        ):
            v = 100 * np.asarray(values)
            color = ("tab:gray", "tab:red", "tab:blue")[j]
            ax.bar(x[i] + (j - 1) * 0.27, v.mean(), 0.25, color=color,
                   label=label if i == 0 else None)  # fmt: skip
            ax.plot([x[i] + (j - 1) * 0.27] * len(v), v, "k.", ms=3)
    ax.set_xticks(x, list(args.methods))
    ax.set_ylabel("held-out greedy exact match (%)")
    ax.set_title(
        f"{args.task_a} then {args.task_b}: mean of {args.seeds} seeds (dots: seeds)",
        fontsize=10,
    )
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict, args: Args, machine: dict, load: float) -> str:
    def pct(values):
        return " / ".join(f"{100 * v:.1f}" for v in values)

    rows = []
    for method in args.methods:
        r = result["methods"][method]
        setting = "-" if r["field"] is None else f"{r['field']} = {r['chosen']:g}"
        ratio = (
            "-"
            if method == "sequential"
            else " / ".join(f"{v:.2f}" for v in r["drop_over_sequential"])
        )
        bar = "-" if method == "sequential" else ("yes" if r["bar_met"] else "**no**")
        rows.append(
            f"| {method} | {setting} | {pct(r['a_after'])} | {pct(r['a_drop'])} | "
            f"{ratio} | {pct(r['b_after'])} | {bar} | {r['seconds']:.0f} |"
        )
    sweeps = []
    for method in args.methods[1:]:
        r = result["methods"][method]
        for v, a, b, va, vb in zip(
            r["values"], *(r["sweep"][k] for k in ("held_out_a", "held_out_b",
                                                   "validation_a", "validation_b")),
            strict=True,
        ):  # fmt: skip
            sweeps.append(
                f"| {method} | {r['field']} = {v:g} | {pct(va)} | {pct(vb)} | "
                f"{pct(a)} | {pct(b)} |"
            )
    return "\n".join([
        f"# Continual forgetting: {args.task_a} then {args.task_b}, "
        f"{args.seeds} vmapped seeds",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, CPU only; 1-minute "
        f"load {machine['load_average_start']:.2f} at the start, {load:.2f} at the "
        "end. Written by `benchmarks/continual_forgetting.py`.",
        "",
        f"Setup: {args.num_layers}-layer transformer, width {args.hidden_size}, 4 "
        "heads, rotary base 100, ByteTokenizer. Phase A: SFT on "
        f"{args.task_a} for {args.steps_a} steps (AdamW {args.learning_rate:g}, "
        f"batch {args.batch_size}), the same run for every method. Phase B: "
        f"{args.steps_b} steps on {args.task_b}, same optimizer (its moments "
        "continue; step size "
        f"{args.learning_rate_b or args.learning_rate:g}), per method. Replay: a "
        "fraction of every batch from task A's ring "
        "(2048 rows, the last A batches), balanced by task. LwF: KL(frozen || "
        f"current) at temperature {args.lwf_temperature:g}, on B's rows as they "
        "are (`lwf`, teacher-forced on B's targets) or on the frozen policy's own "
        "continuations of B's prompts (`lwf_frozen`, sampled every step) or of "
        "B's inputs written in A's prompt format (`lwf_old`: e.g. `sort f,a,a,f=`; "
        "A's template, no A row). "
        f"EWC: diagonal Fisher of {args.fisher_examples} A rows at the switch, "
        "squared per-example "
        "gradients of the log-likelihood of the data's targets (`ewc`, the "
        "empirical Fisher; `ewc_norm`: the same divided by its mean over the "
        "parameters, per run) or of targets sampled from the model (`ewc_model`). "
        "Scores: "
        f"greedy exact match on {args.eval_problems} held-out problems "
        "(`llm.eval_key(0)`); each method's number chosen on validation problems "
        f"(`fold_in(eval_key(0), 1)`): smallest mean A drop among the values where "
        f"every seed reaches B >= {100 * args.b_level:.0f}%.",
        "",
        f"Task A after phase A (held-out, seeds 0/1/2): {pct(result['a_before'])}% "
        f"(level {100 * args.a_level:.0f}%: "
        f"{'reached' if result['a_reached'] else '**not reached**'}; "
        f"{result['seconds_phase_a']:.0f} s with compile).",
        "",
        "Bar: A's drop at most half of sequential's, seed by seed, and B >= "
        f"{100 * args.b_level:.0f}% held-out, for replay, LwF and EWC.",
        "",
        "| method | setting | A after (%) | A drop (points) | drop / sequential's "
        "| B after (%) | bar met | seconds (sweep, with compile) |",
        "|---|---|---|---|---|---|---|---:|",
        *rows,
        "",
        "Every value tried (all seeds; validation chose, held-out reported):",
        "",
        "| method | value | validation A (%) | validation B (%) | held-out A (%) | "
        "held-out B (%) |",
        "|---|---|---|---|---|---|",
        *sweeps,
        "",
        f"![bars]({args.out}.png)",
    ]) + "\n"  # fmt: skip


def main(args: Args) -> dict:
    if not args.methods or args.methods[0] != "sequential":
        raise ValueError("methods must start with 'sequential' (the reference)")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; from {METHODS}")
    for name in (args.task_a, args.task_b):
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; one of {sorted(TASKS)}")
    machine = machine_info()
    start = time.perf_counter()
    result = run(args)
    load = os.getloadavg()[0]
    result = {
        "machine": machine,
        "args": dataclasses.asdict(args),
        "load_at_end": load,
        "seconds_total": time.perf_counter() - start,
        **result,
    }
    out_dir = Path(args.out_dir) if args.out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result, args, machine, load)
    (out_dir / f"{args.out}.md").write_text(md)
    plot(out_dir / f"{args.out}.png", result, args)
    print(md)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
