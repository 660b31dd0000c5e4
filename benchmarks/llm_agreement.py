"""convergence_jax.llm's GRPO-family losses vs TRL's and Tunix's own code, same inputs.

Not a speed benchmark: it measures how far our advantages, policy losses (value
and gradient with respect to the policy's log-probabilities), KL terms, DAPO
overlong reward and token GAE are from the peers' implementations, run from the
peers' installed packages on the same random tensors.

* **Inputs**: made here with NumPy (fixed seeds, several shapes ``[B, T]``,
  prefix masks of random length, row 1 always empty, one hole inside row 0,
  off-policy ``old_logp = logp + 0.3 N(0, 1)``, ``ref_logp = logp + 0.2 N(0, 1)``,
  one group of equal rewards). They travel as float64 JSON lists; every side
  (ours, TRL's torch, Tunix's JAX) casts them to float32 before computing.
  The losses all take the same float64 GRPO advantages, so the loss rows do not
  inherit advantage differences.
* **TRL** (its own venv, ``benchmarks/.venvs/trl``: CPU torch from this
  machine's disk first, then ``trl``): ``GRPOTrainer._compute_loss`` is called
  unbound on a stand-in ``self`` that holds the attributes that method reads;
  the model forward (``_get_per_token_logps_and_entropies``) is replaced by one
  returning the given log-probs (a leaf tensor, so autograd gives the gradient).
  Everything from the ratio to the aggregation is TRL's code. Advantages: TRL
  computes them inline in ``_generate_and_score_completions`` (which needs
  generation and reward models), so the worker runs TRL's ``nanstd`` with a
  transcription of those six lines (``scale_rewards`` group / none / batch).
  Soft overlong punishment: ``trl.rewards.get_soft_overlong_punishment``.
* **Tunix** (``benchmarks/.venvs/tunix``: ``google-tunix`` and the JAX it pulls
  in): ``algo_core.grpo_loss_fn`` with ``common.compute_per_token_logps``
  patched to return the given log-probs (so ``jax.grad`` gives the gradient);
  ``common.aggregate_loss`` and ``compute_kl_divergence`` run inside it.
  Advantages: ``compute_advantages``, ``compute_drgrpo_advantages``,
  ``compute_rloo_advantages``; ``compute_gae_advantages`` (whitened); DAPO's
  ``dapo_learner.reward_shaping``.

Each row reports the largest ``|ours - peer|`` over the cases (values; for the
losses also the gradient, elementwise). Where a row is above ``TOLERANCE`` the
``conventions`` section names the documented convention and checks it
numerically (the difference after applying it).

    python benchmarks/llm_agreement.py            # writes results/llm_agreement.*
    python benchmarks/llm_agreement.py --quick    # one small case, writes nothing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _machine import machine_info
from _worker import JsonWorker, worker_env

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
VENVS = ROOT / ".venvs"
TOLERANCE = 1e-5
TORCH_VERSION = "2.13.0"  # the CPU wheel on this machine's disk
SHAPES = ((4, 4, 16), (4, 3, 33), (2, 8, 64), (8, 2, 24))  # prompts, G, T
QUICK_SHAPES = ((2, 4, 8),)
OVERLONG = {"max_length": 20, "cache_length": 5}
FINDINGS = (
    "GAE whitening: the first run of this script found that "
    "convergence_jax.llm.masked_whiten divided by the population variance while "
    "Tunix's masked_var applies Bessel's correction, n / (n - 1) (a 1.2e-2 "
    "difference on the whitened GAE; the unwhitened returns agreed exactly). "
    "masked_whiten now uses the Bessel-corrected variance, as its docstring "
    "says Tunix does, and the GAE rows of the table agree without any convention.",
)
LEFT_OUT = (
    "GSPO-token against TRL: trl 1.16.0's _compute_loss has only "
    "importance_sampling_level token / sequence (no sequence_token), so "
    "GSPO-token is checked against Tunix only.",
    "Pure sequence-level GSPO against Tunix: Tunix 0.1.7 has gspo-token only, so "
    "the sequence ratio is checked against TRL only (the values agree; the "
    "gradients of the two ratio levels differ by design).",
    "TRL's advantages run inline in _generate_and_score_completions (it needs "
    "generation and reward models); the worker runs TRL's nanstd with a "
    "transcription of those lines, not the method itself.",
    "GEPO ratios: in neither peer. TRL's cispo / sapo / vespo / luspo losses: "
    "not in ours. Entropy bonuses, TRL's use_bias_correction_kl and Tunix's "
    "kl_clamp_value: not compared.",
    "Tunix's ppo_policy_loss_fn / ppo_value_loss_fn (token PPO, value loss) and "
    "RLP / SAO / preference losses: not compared here.",
    "TRL dapo's num_items_in_batch over several processes or accumulation steps: "
    "one process, eval mode (normalizer = this batch's token count) only.",
)

# --------------------------------------------------------------------- inputs


def make_case(seed, prompts, group, length):
    """One set of random inputs as float64 lists (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = prompts * group
    lengths = rng.integers(1, length + 1, rows)
    lengths[1] = 0  # an empty completion
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float64)
    if length > 4:
        lengths[0] = max(lengths[0], 4)
        mask[0, : lengths[0]] = 1.0
        mask[0, 2] = 0.0  # a hole (e.g. a tool-output token)
    logp = -rng.gamma(1.0, 1.0, (rows, length))
    old_logp = logp + 0.3 * rng.normal(size=(rows, length))
    ref_logp = logp + 0.2 * rng.normal(size=(rows, length))
    if seed % 2:
        rewards = rng.integers(0, 2, rows).astype(np.float64)  # pass / fail
    else:
        rewards = rng.normal(size=rows)
    rewards[:group] = 0.5  # a group with zero std
    grouped = rewards.reshape(-1, group)
    advantages = (grouped - grouped.mean(1, keepdims=True)) / (
        grouped.std(1, ddof=1, keepdims=True) + 1e-4
    )
    token_rewards = 0.1 * rng.normal(size=(rows, length))
    values = rng.normal(size=(rows, length))
    overlong_lengths = np.concatenate(
        [[0, 14, 15, 16, 19, 20, 21, 30], rng.integers(0, 40, 24)]
    )
    return {
        "seed": seed,
        "group_size": group,
        "shape": [rows, length],
        "logp": logp.tolist(),
        "old_logp": old_logp.tolist(),
        "ref_logp": ref_logp.tolist(),
        "mask": mask.tolist(),
        "rewards": rewards.tolist(),
        "advantages": advantages.reshape(-1).tolist(),
        "token_rewards": token_rewards.tolist(),
        "values": values.tolist(),
        "overlong_lengths": overlong_lengths.tolist(),
    }


# ----------------------------------------------------------------- the tasks


def trl_tasks():
    tasks = [{"kind": "adv", "scale": s} for s in ("group", "none", "batch")]
    base = {"level": "token", "eps_low": 0.2, "eps_high": 0.2, "delta": None,
            "beta": 0.0, "opsm": None}  # fmt: skip
    variants = {
        "base (eps 0.2)": {},
        "clip-higher (0.2 / 0.28)": {"eps_high": 0.28},
        "GSPO sequence ratio (3e-4 / 4e-4)": {
            "level": "sequence", "eps_low": 3e-4, "eps_high": 4e-4},
        "sequence ratio (eps 0.2)": {"level": "sequence"},
        "two-sided delta 1.25": {"delta": 1.25},
        "KL k3 beta 0.04": {"beta": 0.04},
        "off-policy mask 0.05": {"opsm": 0.05},
    }  # fmt: skip
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        for label, change in variants.items():
            tasks.append({"kind": "loss", "loss_type": loss_type, "label": label,
                          **base, **change})  # fmt: skip
    tasks.append({"kind": "overlong", **OVERLONG})
    return tasks


TUNIX_AGGS = (
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-scale",
    "seq-mean-token-sum",
    "sequence-mean-token-sum-norm",
)
KL_MODES = {"kl": "k1", "mse_kl": "k2", "low_var_kl": "k3"}


def tunix_tasks():
    tasks = [{"kind": "adv", "name": n} for n in ("grpo", "drgrpo", "rloo")]
    base = {"loss_algo": "grpo", "eps": 0.2, "eps_high": 0.2, "eps_c": None,
            "beta": 0.0, "kl_mode": "low_var_kl"}  # fmt: skip
    variants = {
        "base (eps 0.2)": {},
        "clip-higher (0.2 / 0.28)": {"eps_high": 0.28},
        "GSPO-token (3e-4 / 4e-4)": {
            "loss_algo": "gspo-token", "eps": 3e-4, "eps_high": 4e-4},
        "GSPO-token (eps 0.2)": {"loss_algo": "gspo-token"},
        "dual clip epsilon_c 3": {"eps_c": 3.0},
        **{f"KL {m} beta 0.04": {"beta": 0.04, "kl_mode": m} for m in KL_MODES},
    }  # fmt: skip
    for agg in TUNIX_AGGS:
        for label, change in variants.items():
            tasks.append({"kind": "loss", "agg": agg, "label": label,
                          **base, **change})  # fmt: skip
    for gamma, lam in ((1.0, 0.95), (0.99, 1.0)):
        tasks.append({"kind": "gae", "gamma": gamma, "lam": lam})
    tasks.append({"kind": "overlong", **OVERLONG})
    return tasks


def task_name(task):
    if task["kind"] == "adv":
        return f"advantages {task.get('scale') or task.get('name')}"
    if task["kind"] == "loss":
        return f"loss {task.get('loss_type') or task.get('agg')}: {task['label']}"
    if task["kind"] == "gae":
        return f"GAE gamma {task['gamma']} lambda {task['lam']}"
    return "DAPO soft overlong reward"


# ------------------------------------------------------------------ workers


def _arrays(case, xp, dtype):
    names = ("logp", "old_logp", "ref_logp", "mask", "advantages", "rewards",
             "token_rewards", "values")  # fmt: skip
    return {n: xp.asarray(case[n], dtype=dtype) for n in names}


def trl_worker(out):
    from collections import defaultdict
    from types import SimpleNamespace

    import torch
    import trl
    from trl.rewards import get_soft_overlong_punishment
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    info = {"trl": trl.__version__, "torch": torch.__version__,
            "python": sys.version.split()[0]}  # fmt: skip
    print(json.dumps(info), file=out, flush=True)

    def advantages(rewards, group, scale):
        # Transcribed from GRPOTrainer._generate_and_score_completions
        # (multi_objective_aggregation="sum_then_normalize"); nanstd is TRL's.
        mean = torch.nanmean(rewards.view(-1, group), dim=1)
        mean = mean.repeat_interleave(group, dim=0)
        if scale in ("group", "none"):
            std = nanstd(rewards.view(-1, group), dim=1)
            std = std.repeat_interleave(group, dim=0)
        else:
            std = nanstd(rewards).expand_as(rewards)
        adv = rewards - mean
        if scale != "none":
            adv = adv / (std + 1e-4)
        return adv

    def loss(a, task):
        logp = a["logp"].clone().requires_grad_(True)
        rows, length = logp.shape
        mask = a["mask"].to(torch.int64)  # TRL's completion_mask is an int tensor

        def forward(model, input_ids, attention_mask, logits_to_keep, **kwargs):
            return logp, torch.zeros_like(logp), None

        accelerator = SimpleNamespace(
            num_processes=1,
            gather=lambda x: x,
            gather_for_metrics=lambda x: x,
            reduce=lambda x, reduction="sum": x,
            sync_gradients=True,
        )
        stand_in = SimpleNamespace(
            _get_per_token_logps_and_entropies=forward,
            aux_loss_enabled=False,
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=task["opsm"],
            get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
            importance_sampling_level=task["level"],
            beta=task["beta"],
            args=SimpleNamespace(
                use_bias_correction_kl=False, delta=task["delta"],
                steps_per_generation=1),
            loss_type=task["loss_type"],
            epsilon_low=task["eps_low"],
            epsilon_high=task["eps_high"],
            use_vllm=False,
            vllm_importance_sampling_correction=False,
            model=SimpleNamespace(training=False),  # no accumulation scaling
            current_gradient_accumulation_steps=1,
            max_completion_length=length,
            accelerator=accelerator,
            _entropy_bonus_enabled=False,
            _metrics=defaultdict(lambda: defaultdict(list)),
        )  # fmt: skip
        inputs = {
            "prompt_ids": torch.zeros((rows, 1), dtype=torch.int64),
            "prompt_mask": torch.ones((rows, 1), dtype=torch.int64),
            "completion_ids": torch.zeros((rows, length), dtype=torch.int64),
            "completion_mask": mask,
            "advantages": a["advantages"],
            "old_per_token_logps": a["old_logp"],
            "ref_per_token_logps": a["ref_logp"],
            "num_items_in_batch": mask.sum().to(torch.float32),
        }
        value = GRPOTrainer._compute_loss(stand_in, None, inputs)
        value.backward()
        return {"value": value.item(), "grad": logp.grad.tolist()}

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] != "case":
            break
        case = cmd["case"]
        a = _arrays(case, torch, torch.float32)
        replies = []
        for task in cmd["tasks"]:
            if task["kind"] == "adv":
                adv = advantages(a["rewards"], case["group_size"], task["scale"])
                replies.append({"value": adv.tolist()})
            elif task["kind"] == "loss":
                replies.append(loss(a, task))
            else:
                fn = get_soft_overlong_punishment(
                    max_completion_len=task["max_length"],
                    soft_punish_cache=task["cache_length"],
                )
                ids = [[1] * n for n in case["overlong_lengths"]]
                replies.append({"value": fn(completion_ids=ids)})
        print(json.dumps(replies), file=out, flush=True)


def tunix_worker(out):
    from importlib.metadata import version
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from tunix.rl import algo_core, common
    from tunix.rl.grpo import dapo_learner

    info = {"google-tunix": version("google-tunix"), "jax": jax.__version__,
            "flax": version("flax"), "python": sys.version.split()[0]}  # fmt: skip
    print(json.dumps(info), file=out, flush=True)

    class NoModel(nnx.Module):
        """grpo_loss_fn splits the model; the forward below never reads it."""

    model = NoModel()
    given = {}

    def per_token_logps(graphdef, state, **kwargs):
        logp = given["logp"]
        return logp, jnp.zeros(logp.shape + (2,), logp.dtype)

    common.compute_per_token_logps = per_token_logps  # algo_core reads it from common

    def loss(a, task):
        rows, length = a["logp"].shape
        example = SimpleNamespace(
            prompt_ids=jnp.zeros((rows, 1), jnp.int32),
            completion_ids=jnp.zeros((rows, length), jnp.int32),
            completion_mask=a["mask"],
            advantages=a["advantages"],
            old_per_token_logps=a["old_logp"],
            ref_per_token_logps=a["ref_logp"] if task["beta"] else None,
        )
        config = SimpleNamespace(
            beta=task["beta"], epsilon=task["eps"], epsilon_high=task["eps_high"],
            epsilon_c=task["eps_c"], loss_algo=task["loss_algo"],
            loss_agg_mode=task["agg"], temperature=1.0,
            kl_loss_mode=task["kl_mode"], kl_clamp_value=None,
        )  # fmt: skip

        def value_of(logp):
            given["logp"] = logp
            value, _ = algo_core.grpo_loss_fn(model, example, config, 0, 1)
            return value

        value, grad = jax.value_and_grad(value_of)(a["logp"])
        return {"value": float(value), "grad": np.asarray(grad).tolist()}

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] != "case":
            break
        case = cmd["case"]
        a = _arrays(case, jnp, jnp.float32)
        group = case["group_size"]
        replies = []
        for task in cmd["tasks"]:
            if task["kind"] == "adv":
                if task["name"] == "grpo":  # Tunix's takes a NumPy array
                    rewards = np.asarray(case["rewards"], np.float32)
                    adv = algo_core.compute_advantages(rewards, group)
                elif task["name"] == "drgrpo":
                    adv = algo_core.compute_drgrpo_advantages(a["rewards"], group)
                else:
                    adv = algo_core.compute_rloo_advantages(a["rewards"], group)
                replies.append({"value": np.asarray(adv).tolist()})
            elif task["kind"] == "loss":
                replies.append(loss(a, task))
            elif task["kind"] == "gae":
                adv, returns = algo_core.compute_gae_advantages(
                    a["token_rewards"], a["values"], a["mask"], task["gamma"],
                    task["lam"],
                )  # fmt: skip
                replies.append({"value": np.asarray(adv).tolist(),
                                "returns": np.asarray(returns).tolist()})  # fmt: skip
            else:
                buffer = {
                    "overlong_buffer_length": task["cache_length"],
                    "overlong_buffer_penalty": 1.0,
                    "max_response_length": task["max_length"],
                }
                texts = ["x" * n for n in case["overlong_lengths"]]  # it counts chars
                scores = dapo_learner.reward_shaping(
                    [""] * len(texts), texts, None, overlong_buffer=buffer
                )
                replies.append({"value": list(map(float, scores))})
        print(json.dumps(replies), file=out, flush=True)


# ------------------------------------------------------------------- ours


def ours(case, task, peer):
    """Our value (and gradient) for one task, float32, as the peer is asked."""
    import jax.numpy as jnp
    import numpy as np

    from convergence_jax import llm

    a = _arrays(case, jnp, jnp.float32)
    group = case["group_size"]
    if task["kind"] == "adv":
        name = task.get("scale") or task.get("name")
        fn = {
            "group": lambda r: llm.grpo_advantages(r, group, epsilon=1e-4),
            "none": lambda r: llm.dr_grpo_advantages(r, group),
            "batch": lambda r: llm.batch_std_advantages(r, group, epsilon=1e-4),
            "grpo": lambda r: llm.grpo_advantages(r, group, epsilon=1e-6),
            "drgrpo": lambda r: llm.dr_grpo_advantages(r, group),
            "rloo": lambda r: llm.rloo_advantages(r, group),
        }[name]
        return {"value": np.asarray(fn(a["rewards"])).tolist()}
    if task["kind"] == "overlong":
        lengths = jnp.asarray(case["overlong_lengths"])
        capped = peer == "trl"  # Tunix keeps the ramp past max_length
        value = llm.soft_overlong_punishment(
            lengths, task["max_length"], task["cache_length"], capped=capped
        )
        return {"value": np.asarray(value).tolist()}
    if task["kind"] == "gae":
        adv, returns = llm.token_gae(
            a["token_rewards"], a["values"], a["mask"],
            gamma=task["gamma"], gae_lambda=task["lam"],
        )  # fmt: skip
        return {
            "value": np.asarray(llm.masked_whiten(adv, a["mask"])).tolist(),
            "raw": np.asarray(adv).tolist(),
            "returns": np.asarray(returns).tolist(),
        }
    return _our_loss(a, task, peer)


def _our_loss(a, task, peer, aggregation=None):
    import jax
    import numpy as np

    from convergence_jax import llm

    if peer == "trl":
        kwargs = dict(
            ratio_level=task["level"],
            epsilon_low=task["eps_low"],
            epsilon_high=task["eps_high"],
            delta=task["delta"],
            aggregation=aggregation or task["loss_type"],
            beta=task["beta"],
            kl_estimator="k3",
        )
    else:
        level = "sequence_token" if task["loss_algo"] == "gspo-token" else "token"
        kwargs = dict(
            ratio_level=level,
            epsilon_low=task["eps"],
            epsilon_high=task["eps_high"],
            dual_clip=task["eps_c"],
            aggregation=aggregation or task["agg"],
            beta=task["beta"],
            kl_estimator=KL_MODES[task["kl_mode"]],
        )
    ref = a["ref_logp"] if task["beta"] else None

    def value_of(logp):
        weights = None
        if peer == "trl" and task["opsm"] is not None:
            weights = llm.off_policy_mask(
                a["advantages"], logp, a["old_logp"], a["mask"], task["opsm"]
            )
        loss, _ = llm.policy_loss(
            logp, a["old_logp"], a["advantages"], a["mask"], ref_logp=ref,
            sequence_weights=weights, **kwargs,
        )  # fmt: skip
        return loss

    value, grad = jax.value_and_grad(value_of)(a["logp"])
    return {"value": float(value), "grad": np.asarray(grad).tolist()}


# ------------------------------------------------------------------- parent


def peer_python(name):
    """The interpreter of ``benchmarks/.venvs/<name>``, created on first use."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    if python.exists():
        return str(python)
    print(f"creating {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    if name == "trl":
        # The CPU torch wheel on this machine's disk first, so that pip never
        # pulls a CUDA build for trl's dependency on torch.
        subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)
        subprocess.run(pip + ["trl"], check=True)
    else:
        subprocess.run(pip + ["google-tunix"], check=True)
    return str(python)


def max_abs(x, y, mask=None):
    import numpy as np

    d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
    if mask is not None:
        d = d[np.asarray(mask) > 0]
    return float(d.max()) if d.size else 0.0


def compare(peer, case, task, mine, theirs):
    row = {"value": max_abs(mine["value"], theirs["value"])}
    if task["kind"] == "gae":  # where masked, Tunix carries the next value
        row["value"] = max_abs(mine["value"], theirs["value"], case["mask"])
        row["returns"] = max_abs(mine["returns"], theirs["returns"], case["mask"])
    if "grad" in mine:
        row["grad"] = max_abs(mine["grad"], theirs["grad"])
        row["peer_grad_scale"] = max_abs(theirs["grad"], 0.0)
    row["peer_scale"] = max_abs(theirs["value"], 0.0)  # the size of what agrees
    return row


def conventions(case, task, mine, theirs):
    """Documented conventions, checked: the difference once each is applied."""
    import numpy as np

    checks = []
    mask = np.asarray(case["mask"])
    rows = mask.shape[0]
    nonempty = max(int((mask.sum(1) > 0).sum()), 1)
    base = task["kind"] == "loss" and task["label"] == "base (eps 0.2)"
    if base and task.get("agg") in (
        "sequence-mean-token-mean",
        "sequence-mean-token-scale",
    ):
        import jax.numpy as jnp

        trl_name = {"sequence-mean-token-mean": "grpo",
                    "sequence-mean-token-scale": "dr_grpo"}[task["agg"]]  # fmt: skip
        a = _arrays(case, jnp, jnp.float32)
        as_trl = _our_loss(a, task, "tunix", aggregation=trl_name)["value"]
        checks.append({
            "what": f"ours '{trl_name}' (TRL: / B rows) vs Tunix '{task['agg']}' "
                    "(/ non-empty rows R)",
            "raw": abs(as_trl - theirs["value"]),
            "after": abs(as_trl * rows / nonempty - theirs["value"]),
            "applied": "multiply by B / R",
        })  # fmt: skip
    if task["kind"] == "overlong" and task["_peer"] == "tunix":
        import jax.numpy as jnp

        from convergence_jax import llm

        lengths = jnp.asarray(case["overlong_lengths"])
        capped = llm.soft_overlong_punishment(
            lengths, task["max_length"], task["cache_length"], capped=True
        )
        checks.append({
            "what": "ours capped=True (TRL, -1 past max_length) vs Tunix "
                    "(linear ramp past max_length)",
            "raw": max_abs(np.asarray(capped), theirs["value"]),
            "after": max_abs(mine["value"], theirs["value"]),
            "applied": "capped=False",
        })  # fmt: skip
    return checks


def main(args):
    shapes = QUICK_SHAPES if args.quick else SHAPES
    cases = [make_case(seed, *shape) for seed, shape in enumerate(shapes)]
    peers = {"trl": trl_tasks(), "tunix": tunix_tasks()}
    result = {"machine": machine_info(), "tolerance": TOLERANCE, "inputs": {
        "shapes [B, T]": [c["shape"] for c in cases],
        "group sizes": [c["group_size"] for c in cases],
        "seeds": [c["seed"] for c in cases],
        "dtype": "generated float64 (NumPy), sent as JSON lists, cast to float32 "
                 "by every side",
    }, "peers": {}, "rows": [], "conventions": [],
        "findings": list(FINDINGS), "left_out": list(LEFT_OUT)}  # fmt: skip
    import jax

    result["ours"] = {"jax": jax.__version__}
    for peer, tasks in peers.items():
        try:
            python = peer_python(peer)
            worker = JsonWorker(
                [python, __file__, "--worker", peer],
                worker_env(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES=""),
            )
        except (subprocess.CalledProcessError, RuntimeError, OSError) as error:
            result["peers"][peer] = {"error": f"{type(error).__name__}: {error}"}
            continue
        result["peers"][peer] = worker.info
        worst = {}
        for case in cases:
            replies = worker.ask(op="case", case=case, tasks=tasks)
            for task, theirs in zip(tasks, replies, strict=True):
                mine = ours(case, task, peer)
                diff = compare(peer, case, task, mine, theirs)
                name = task_name(task)
                entry = worst.setdefault(name, {"peer": peer, "quantity": name})
                for key, value in diff.items():
                    entry[key] = max(entry.get(key, 0.0), value)
                for check in conventions(case, {**task, "_peer": peer}, mine, theirs):
                    check.update(peer=peer, quantity=name, shape=case["shape"])
                    result["conventions"].append(check)
        worker.close()
        result["rows"].extend(worst.values())
    return result


def markdown(result):
    tol = result["tolerance"]
    lines = ["# convergence_jax.llm vs TRL and Tunix: largest |ours - peer|", ""]
    lines.append(f"Machine: {result['machine']}. Ours: jax {result['ours']['jax']}.")
    for peer, info in result["peers"].items():
        lines.append(f"- {peer}: {json.dumps(info)}")
    inputs = result["inputs"]
    lines += ["", f"Inputs: shapes {inputs['shapes [B, T]']}, group sizes "
              f"{inputs['group sizes']}, seeds {inputs['seeds']}; {inputs['dtype']}. "
              "Row 1 of every batch is empty; row 0 has a hole.", ""]  # fmt: skip
    lines += ["| peer | quantity | max abs diff (value) | max abs diff (grad) "
              "| peer max abs (value / grad) | within 1e-5 |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["rows"]:
        grad = row.get("grad")
        worst = max(row["value"], grad or 0.0, row.get("returns", 0.0))
        value = f"{row['value']:.2e}"
        if "returns" in row:
            value += f" (returns {row['returns']:.2e})"
        grad_text = "" if grad is None else f"{grad:.2e}"
        ok = "yes" if worst <= tol else "no, see conventions"
        scale = f"{row['peer_scale']:.2g}"
        if grad is not None:
            scale += f" / {row['peer_grad_scale']:.2g}"
        lines.append(f"| {row['peer']} | {row['quantity']} | {value} | "
                     f"{grad_text} | {scale} | {ok} |")  # fmt: skip
    lines += ["", "## Conventions, checked", "",
              "| peer | quantity | shape | convention | before | applied | after |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in result["conventions"]:
        lines.append(
            f"| {c['peer']} | {c['quantity']} | {c['shape']} | {c['what']} "
            f"| {c['raw']:.2e} | {c['applied']} | {c['after']:.2e} |"
        )
    lines += ["", "## Findings", ""]
    lines += [f"- {item}" for item in result["findings"]]
    lines += ["", "## Left out", ""]
    lines += [f"- {item}" for item in result["left_out"]]
    for peer, info in result["peers"].items():
        if "error" in info:
            lines.append(f"- {peer} could not run here: {info['error']}")
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["trl", "tunix"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="one small case, no files")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    if args.worker:
        stdout = sys.stdout
        sys.stdout = sys.stderr  # library chatter must not break the JSON lines
        {"trl": trl_worker, "tunix": tunix_worker}[args.worker](stdout)
        sys.exit(0)
    result = main(args)
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "llm_agreement.json").write_text(
            json.dumps(result, indent=1) + "\n"
        )
        (args.out / "llm_agreement.md").write_text(text)
        print(f"wrote {args.out / 'llm_agreement'}.json and .md")
