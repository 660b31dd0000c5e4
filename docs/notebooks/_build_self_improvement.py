"""Build docs/notebooks/self_improvement.ipynb from these cells.

python docs/notebooks/_build_self_improvement.py
"""

from pathlib import Path

import nbformat as nbf

cells = []


def md(source: str) -> None:
    cells.append(nbf.v4.new_markdown_cell(source.strip()))


def code(source: str) -> None:
    cells.append(nbf.v4.new_code_cell(source.strip()))


md("""
# Self-improving policies: DPO and SimPO, SAO, RLP

Three ways a model improves itself, on our JAX transformer:

1. **preference training** (`llm.make_preference`): DPO against a frozen reference
   and SimPO without one, on pairs of a right and a one-token-wrong answer, seeds
   vmapped;
2. **SAO** (`self_improve.sao`): the model writes a prompt for each persona,
   answers it twice, ranks its own answers (`ranking: X > Y`), and the kept pairs
   train it with SimPO;
3. **RLP** (`self_improve.rlp`): the model thinks before each next token of a token
   stream and is rewarded by how much its thought raised the log-likelihood of the
   true token over an EMA no-think baseline.

`SMALL = True` (the default, used by the test suite: a 1-layer width-32 model, 60
DPO updates, SimPO left to `SMALL = False`, two SAO rounds and 10 RLP steps on
untrained models) shows the **mechanics** in about a minute on a CPU, **not the
learning**. `SMALL = False` runs the preference bar's setting for DPO and SimPO
(`benchmarks/preference_learning.py`: a 2-layer width-64 model, 5,000 updates with a
cosine schedule; held-out win rate above 90% in every seed, measured) — minutes on a
GPU, about 15 on a 2-core CPU. The SAO and RLP bars are measured in
`benchmarks/sao_learning.py` and `benchmarks/rlp_learning.py` (see
`docs/self_improvement.md` for the figures: neither is met yet). The guide is
`docs/self_improvement.md`.
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
import dataclasses
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from convergence_jax import llm, lm
from convergence_jax.self_improve import rlp, sao
from convergence_jax.self_improve.pairs import PairFilter, load_pairs
from convergence_jax.self_improve.personas import persona_bank

SMALL = True  # False: the preference bar's setting
print(jax.devices())
""")
md("""
## 1. DPO and SimPO on synthetic preferences

`llm.synthetic_preferences` turns a verifiable task into pairs: the chosen answer is
the right one, the rejected one the same with one token replaced. Train and held-out
prompts are disjoint. The *win rate* is the fraction of held-out pairs whose chosen
answer the policy gives a strictly higher log-probability.
""")
code("""
tokenizer = lm.ByteTokenizer()
task = llm.tasks.reverse(4, tokenizer)
data = llm.synthetic_preferences(
    task, num_pairs=1024 if SMALL else 16384, seed=0, held_out=128 if SMALL else 512
)
config = lm.LMConfig(
    vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
    num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16, rope_theta=100.0,
    max_position_embeddings=32, eos_token_id=tokenizer.eos_id,
    pad_token_id=tokenizer.pad_id,
)
if not SMALL:  # the preference bar's model
    config = dataclasses.replace(config, hidden_size=64, intermediate_size=256,
                                 num_layers=2, num_heads=4, num_kv_heads=4)
steps = 60 if SMALL else 5000
print(len(data.train.prompt_tokens), "training pairs,",
      len(data.held_out.prompt_tokens), "held out")
""")
md("""
Every number of a run (step size, schedule, `beta`, `gamma`) is traced, so the
seeds are one `vmap` and a whole run is one compiled `lax.scan`. DPO's loss at step
one is ln 2 (the policy equals its reference).
""")
code("""
settings = {"dpo": dict(beta=1.0), "simpo": dict(beta=10.0, gamma=3.0)}
if SMALL:  # one compiled program: each loss is its own
    settings = {"dpo": settings["dpo"]}
keys = jnp.stack([jax.random.key(seed) for seed in range(2 if SMALL else 3)])
curves, win_rates = {}, {}
for loss, numbers in settings.items():
    hparams = llm.PreferenceHParams.create(
        learning_rate=3e-3, warmup_steps=20, decay_steps=steps, **numbers)
    pref = llm.make_preference(config, loss, batch_size=32, hparams=hparams)
    evaluate = jax.jit(jax.vmap(lambda s: pref.evaluate(s, data.held_out)))
    state = jax.vmap(pref.init)(keys)
    before = evaluate(state)["win_rate"]
    state, metrics = jax.jit(
        jax.vmap(lambda s: pref.run(s, data.train, num_steps=steps)))(state)
    after = evaluate(state)["win_rate"]
    curves[loss], win_rates[loss] = np.asarray(metrics["loss"]), (before, after)
    print(f"{loss:>5}: first loss {np.round(metrics['loss'][:, 0], 4)}, held-out win "
          f"rate {np.round(before, 3)} -> {np.round(after, 3)}")
""")
code("""
fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3), squeeze=False)
axes = axes[0]
for ax, (loss, curve) in zip(axes, curves.items()):
    for seed, row in enumerate(curve):
        ax.plot(row, label=f"seed {seed}")
    ax.set(title=loss, xlabel="update", ylabel="loss")
axes[0].legend()
plt.tight_layout()
""")
md("""
## 2. SAO: preference data the model makes for itself

One round: for each persona the model writes a prompt (`COMPACT_TEMPLATES`, the
short instructions a tiny model is warmed up on; `PAPER_TEMPLATES` are the paper's),
answers it twice at temperature 0.6, and ranks its answers in both orders; a pair is
kept when the two rankings parse and agree, then passes the quality filters
(lengths, distinct-n, near-duplicate prompts). Every drop is counted. The kept pairs
train the model with SimPO (beta 10, gamma 3, SAO's recipe), and the trained model
writes the next round. Here the model is untrained, so its rankings rarely parse and
few pairs survive: the counts are the point. `benchmarks/sao_learning.py` warms the
model up on writing, answering and judging first (`sao.PersonaArithmetic`).
""")
code("""
# The model of docs/self_improvement.md's SAO example (the test suite compiles its
# programs once for both).
sao_config = lm.LMConfig(
    vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
    num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16,
    max_position_embeddings=64, eos_token_id=tokenizer.eos_id,
    pad_token_id=tokenizer.pad_id,
)
params = lm.init_params(jax.random.key(0), sao_config)
model = sao.JaxGenerator(sao_config, tokenizer, params, max_new_tokens=6,
                         prompt_length=48, batch_size=8)
trainer = sao.PreferenceTrainer(sao_config, tokenizer, prompt_length=8,
                                completion_length=7, batch_size=4, num_steps=2,
                                capacity=8)
out = Path(tempfile.mkdtemp()) / "sao"
reports = sao.run_sao(
    jax.random.key(1), model, persona_bank()[:8],
    sao.SAOConfig(templates=sao.COMPACT_TEMPLATES, filter=PairFilter(unit="char")),
    rounds=2 if SMALL else 3, trainer=trainer, out_dir=out,
)
for report in reports:
    print({k: report[k] for k in ("round", "pairs_sampled", "parse_failures",
                                  "position_inconsistent", "kept")})
print(sorted(p.name for p in out.iterdir()))
print(load_pairs(out / "round_1.jsonl")[:2])
""")
md("""
## 3. RLP: thoughts rewarded by information gain

A token stream where every digit is the sum (mod 10) of three earlier ones: a
thought can carry the sum. For `B` positions of the stream and `G` thoughts each
(sampled after a forced `<think>` token), the reward is `log p(x_t | x_<t, thought)
- log pbar(x_t | x_<t)`, the no-think log-likelihood under an EMA copy of the model
(updated after every optimizer step, `tau = 0.999`); leave-one-out advantages and a
clipped surrogate on the thought tokens only. No label and no verifier: the stream
is the data. From an untrained model the reward hovers around 0 (its thoughts carry
nothing yet); `benchmarks/rlp_learning.py` warms the model up on scratchpads first.
""")
code("""
START, END, PAD = 10, 11, 12  # <think>, </think>, padding; digits are 0-9
rlp_model = lm.LMConfig(vocab_size=16, hidden_size=32, intermediate_size=64,
                        num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                        rope_theta=100.0, max_position_embeddings=32)
rlp_config = rlp.RLPConfig(think_start=START, think_end=END, pad_id=PAD,
                           group_size=4, batch_size=8, context_length=8,
                           min_context=4, max_thought_tokens=6)
program = rlp.make_rlp(rlp_config, rlp_model,
                       rlp.RLPHParams.create(learning_rate=1e-3, tau=0.999))
stream = rlp.digit_sum_stream(jax.random.key(0), 256, 12, offsets=(1, 2, 4))
print(stream[0])
rlp_params = lm.init_params(jax.random.key(1), rlp_model)
keys = jnp.stack([jax.random.key(s) for s in range(2)])
rlp_state = jax.vmap(program.init, in_axes=(0, None))(keys, rlp_params)
rlp_state, rlp_metrics = jax.jit(jax.vmap(
    lambda s: program.run(s, stream, num_steps=10 if SMALL else 500)))(rlp_state)
for name in ("reward", "logp_think", "logp_ema", "thought_length"):
    print(f"{name:>14}: first {np.round(rlp_metrics[name][:, 0], 3)}, "
          f"last {np.round(rlp_metrics[name][:, -1], 3)}")
""")
code("""
plt.figure(figsize=(5, 3))
for seed, row in enumerate(np.asarray(rlp_metrics["reward"])):
    plt.plot(row, label=f"seed {seed}")
plt.xlabel("RLP step"); plt.ylabel("mean information-gain reward"); plt.legend()
""")
md("""
## Next

- `python experiments/preference.py --loss simpo --beta 10 --gamma 3 --cosine-decay`:
  any loss of the family (DPO, IPO, cDPO, robust DPO, SimPO, ORPO) from the command
  line, with `metrics.jsonl` and `summary.json`.
- `python experiments/sao.py --help`: SAO pairs from an OpenAI-compatible endpoint.
- `convergence-jax optimize examples/society.yaml`: RLP and SAO agents beside the
  optimizer's GA (`society:` in the YAML; `docs/optimize.md`).
- `benchmarks/preference_speed.py`: DPO steps/s against TRL and Tunix.
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"] = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
nbf.write(nb, Path(__file__).with_name("self_improvement.ipynb"))
