"""``run_optimization``: the thin shell around Thompson sampling + evolution.

It reads a config, builds the optimizer, evaluates the objective, shows progress and
writes the output folder:

- ``best_config.json``: the best configuration (evaluations pooled over the run, ranked
  by ``score``), with ``mean_reward`` (the raw mean of its evaluations: biased upward,
  since the winner is the configuration whose noisy mean came out highest),
  ``score`` (that mean shrunk toward the run's mean reward by one pseudo-evaluation,
  ``(sum + run_mean_reward) / (evaluations + 1)``), ``run_mean_reward``,
  ``evaluations`` and ``generations_completed``;
- ``detailed_results.json``: every generation and every evaluation (config, metrics,
  reward, error);
- ``report.md`` with ``convergence.png``: the convergence plot and the top
  configurations (and, with a ``society``, what each of its agents contributed:
  ``optimize.society``).

A JAX objective (and the bundled simulator) runs as one compiled program; a Python
callable or an HTTP endpoint runs on a bounded pool of reused threads between
compiled steps: one call per Thompson-sampling round (observe the round, propose the
next) and one per generation's end (observe, evolve), the population fetched and
decoded once per generation. Such a host-loop run journals every evaluation as it
settles (``evaluations.jsonl``, flushed) and saves its state atomically after every
generation (``checkpoint.pkl``, fsynced), so ``run_optimization(config, resume=True)``
(the CLI's ``--resume OUTDIR``) continues an interrupted run without calling the
objective again for anything it had finished.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from convergence_jax.evolution.mab import (
    mab_evolution,
    reward_prior,
    run_mab_evolution,
)
from convergence_jax.optimize.config import (
    ConfigError,
    OptimizeConfig,
    config_from_dict,
    load_config,
    reward_spec,
    validate,
)
from convergence_jax.optimize.evaluate import EvaluationPool, evaluate_batch
from convergence_jax.optimize.metrics import RewardSpec
from convergence_jax.optimize.objectives import jax_objective, load_target
from convergence_jax.optimize.report import top_configurations, write_report
from convergence_jax.spaces import SearchSpace

__all__ = ["OptimizationResult", "run_optimization"]


@dataclasses.dataclass
class OptimizationResult:
    """What a run found, and where it wrote it."""

    best_config: dict[str, Any]
    best_reward: float
    """Raw mean reward over the best configuration's evaluations (biased upward: the
    best is picked for its high noisy mean)."""
    best_evaluations: int
    generations: list[dict[str, Any]]
    output_dir: Path | None
    seconds: float
    best_score: float | None = None
    """``best_reward`` shrunk toward the run's mean reward by one pseudo-evaluation,
    ``(sum + run mean) / (n + 1)``: the score the best configuration was ranked by."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_optimizer(config: OptimizeConfig, reward: RewardSpec):
    """The mab_evolution optimizer and its params for a config."""
    opt = config.optimizer
    me = mab_evolution(
        config.space(),
        population_size=opt.population_size,
        evaluations_per_generation=opt.evaluations_per_generation,
        batch_size=opt.batch_size,
        selection=opt.selection,
        mutation=opt.mutation,
        crossover=opt.crossover,
    )
    ga_params = me.default_params.ga.replace(num_elites=jnp.asarray(opt.elites))
    overrides = {
        name: jnp.asarray(getattr(opt, name), jnp.float32)
        for name in ("mutation_rate", "mutation_std", "crossover_rate")
        if getattr(opt, name) is not None
    }
    ga_params = ga_params.replace(**overrides)
    params = me.default_params.replace(
        ga=ga_params,
        bandit=_prior_for_scale(me.default_params.bandit, reward),
        failure_reward=jnp.asarray(reward.failure_reward, jnp.float32),
    )
    return me, params


def _prior_for_scale(bandit_params, reward: RewardSpec):
    """With bounded metrics rewards lie in [0, sum of weights]; else assume [-1, 1]."""
    top = reward.best_reward
    if top:
        return reward_prior(bandit_params, center=0.5 * top, scale=top)
    return reward_prior(bandit_params, center=0.0, scale=1.0)


def _to_host(tree):
    return jax.tree.map(np.asarray, tree)


def _generation_record(
    space, g, ended, evaluations: list[dict[str, Any]], population=None
) -> dict[str, Any]:
    """``population``: the generation's configurations, decoded (default: decode
    ``ended["population"]``)."""
    if population is None:
        population = space.decode(ended["population"])
    fitness = np.asarray(ended["fitness"], dtype=float)
    counts = np.asarray(ended["counts"])
    best = int(np.argmax(fitness))
    rewards = [e["reward"] for e in evaluations]
    return {
        "generation": g,
        "best_config": population[best],
        "best_posterior_mean": float(fitness[best]),
        "best_evaluations": int(counts[best]),
        "mean_reward": float(np.mean(rewards)),
        "failures": sum(e["error"] is not None for e in evaluations),
        "population": [
            {
                "arm": i,
                "config": dict(c),
                "posterior_mean": float(fitness[i]),
                "evaluations": int(counts[i]),
            }
            for i, c in enumerate(population)
        ],
        "evaluations": evaluations,
    }


def _jax_records(space, reward, history, num_generations):
    """Per-generation records from the scanned history of one compiled run."""
    records = []
    for g in range(num_generations):
        at = jax.tree.map(lambda x, g=g: x[g], history)
        population = at["population"]
        evaluations = []
        for part in (at["first"], at["rounds"]):
            arms = part["arms"].reshape(-1)
            rewards = part["rewards"].reshape(-1)
            metrics = {k: v.reshape(-1) for k, v in part["aux"].items()}
            configs = space.decode(jax.tree.map(lambda x, a=arms: x[a], population))
            for j, arm in enumerate(arms):
                values = {k: float(v[j]) for k, v in metrics.items()}
                ok = all(math.isfinite(v) for v in values.values())
                evaluations.append(
                    {
                        "arm": int(arm),
                        "config": configs[j],
                        "metrics": values,
                        "reward": float(rewards[j]),
                        "error": None if ok else "non-finite metric",
                    }
                )
        records.append(_generation_record(space, g, at, evaluations))
    return records


def _run_jax(config, me, params, reward, progress):
    space = config.space()
    objective = jax_objective(config, space)
    names = set(reward.names)

    def scored(key, configs):
        metrics = objective(key, configs)
        missing = names - set(metrics)
        if missing:
            raise ValueError(
                f"the objective returned metrics {sorted(metrics)}; the config's "
                f"metrics {sorted(missing)} are missing"
            )
        return reward.combine(metrics), metrics

    bar = tqdm(
        total=config.optimizer.generations,
        desc="generations",
        disable=not progress,
        unit="gen",
    )

    def on_generation(generation, best):
        bar.update(1)
        bar.set_postfix(best=f"{float(best):.4f}")

    program = jax.jit(
        lambda key, params: run_mab_evolution(
            key,
            me,
            params,
            scored,
            config.optimizer.generations,
            has_aux=True,
            callback=on_generation,
        )
    )
    try:
        _, history = program(jax.random.key(config.optimizer.seed), params)
        history = _to_host(history)
    finally:
        bar.close()
    return _jax_records(space, reward, history, config.optimizer.generations)


class _Checkpoint:
    """The resumable state of a host-loop run, in the output folder.

    - ``checkpoint.pkl``: after every generation, atomically (written aside, fsynced,
      renamed): the optimizer state, the key, the generation and every record;
    - ``evaluations.jsonl``: every evaluation as soon as it is settled, appended and
      flushed, keyed by (generation, round, slot), so a run killed mid-generation
      does not call the objective again for what it had finished (a power cut may
      lose the unfinished generation's lines; its finished generations are in the
      fsynced ``checkpoint.pkl``).
    """

    VERSION = 1

    def __init__(self, out: Path | None, fingerprint: dict):
        self.out = out
        self.fingerprint = fingerprint
        self.path = out / "checkpoint.pkl" if out else None
        self.journal_path = out / "evaluations.jsonl" if out else None
        self._journal = None

    def start_fresh(self) -> None:
        if self.out is None:
            return
        self.path.unlink(missing_ok=True)
        self._journal = open(self.journal_path, "w")  # noqa: SIM115 - kept open

    def load(self, template) -> tuple[Any, jax.Array, list, float, dict]:
        """(state, key, records, seconds, journal) of the run in ``out``."""
        if self.path is None or not self.path.is_file():
            where = self.out if self.out is not None else "(no output folder)"
            raise ConfigError(
                f"--resume: {where} has no checkpoint.pkl to resume from (a run "
                "writes it after its first generation)"
            )
        with open(self.path, "rb") as f:
            saved = pickle.load(f)
        if saved.get("version") != self.VERSION:
            raise ConfigError(f"--resume: {self.path} was written by another version")
        changed = _differences(saved["fingerprint"], self.fingerprint)
        if changed:
            raise ConfigError(
                "--resume: the config differs from the run being resumed: "
                + "; ".join(changed)
            )
        leaves, treedef = jax.tree.flatten(template)
        if len(leaves) != len(saved["leaves"]):
            raise ConfigError(f"--resume: {self.path} does not match this optimizer")
        restored = [
            jax.random.wrap_key_data(jnp.asarray(v)) if is_key else jnp.asarray(v)
            for v, is_key in saved["leaves"]
        ]
        state = jax.tree.unflatten(treedef, restored)
        key = jax.random.wrap_key_data(jnp.asarray(saved["key"]))
        journal = {}
        if self.journal_path.is_file():
            for line in self.journal_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run may be cut short
                journal[(entry["generation"], entry["round"], entry["slot"])] = entry
        self._journal = open(self.journal_path, "a")  # noqa: SIM115 - kept open
        return state, key, saved["records"], saved["seconds"], journal

    def record(self, entry: dict) -> None:
        if self._journal is None:
            return
        # Flushed, not fsynced: the line reaches the operating system at once, so a
        # run that is killed (Ctrl-C, SIGKILL, out of memory, a crash) loses none;
        # checkpoint.pkl, fsynced every generation, is what survives a power cut.
        self._journal.write(json.dumps(entry) + "\n")
        self._journal.flush()

    def save(self, state, key, records, seconds) -> None:
        if self.path is None:
            return
        leaves = []
        for leaf in jax.tree.leaves(state):
            is_key = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
            data = jax.random.key_data(leaf) if is_key else leaf
            leaves.append((np.asarray(data), bool(is_key)))
        saved = {
            "version": self.VERSION,
            "fingerprint": self.fingerprint,
            "leaves": leaves,
            "key": np.asarray(jax.random.key_data(key)),
            "records": records,
            "seconds": seconds,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(saved, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _fingerprint(config: OptimizeConfig) -> dict:
    """What must not change between a run and its resumption."""
    data = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    data.pop("output", None)
    data.pop("base_dir", None)
    data["optimizer"].pop("generations", None)  # a resumed run may go on longer
    data["society"].pop("llm", None)  # the society's endpoint may move meanwhile
    return data


def _differences(old, new, where="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            path = f"{where}.{k}" if where else str(k)
            out += _differences(old.get(k), new.get(k), path)
        return out
    return [] if old == new else [f"{where} was {old!r}, now {new!r}"]


@functools.lru_cache(maxsize=8)
def _host_programs(space_json: str, settings: tuple):
    """Jitted programs of the host loop, shared by runs with the same shapes.

    Every number lives in the params (traced), so runs that differ only in numbers
    (seeds, rates, the objective) reuse the compiled programs. A round is one call:
    ``step`` adds the round's rewards to the posteriors and proposes the next arms
    (splitting the key as the loop would), ``finish`` adds the last round's rewards
    and breeds the next generation; ``split`` opens a generation.
    """
    population_size, evaluations, batch_size, selection, mutation, crossover = settings
    me = mab_evolution(
        SearchSpace.from_dict(json.loads(space_json)),
        population_size=population_size,
        evaluations_per_generation=evaluations,
        batch_size=batch_size,
        selection=selection,
        mutation=mutation,
        crossover=crossover,
    )

    def split(key):
        return tuple(jax.random.split(key, 3))

    def step(k_observe, state, arms, rewards, key, params):
        state = me.observe(k_observe, state, arms, rewards, params)
        key, k_propose, k_next = jax.random.split(key, 3)
        return state, me.propose(k_propose, state, params), key, k_next

    def finish(k_observe, state, arms, rewards, k_evolve, params):
        state = me.observe(k_observe, state, arms, rewards, params)
        state, ended = me.evolve(k_evolve, state, params)
        ended = {k: ended[k] for k in ("fitness", "counts")}
        return state, ended, state.ga.population

    return jax.jit(me.init), jax.jit(split), jax.jit(step), jax.jit(finish)


def _host_objective(config: OptimizeConfig):
    """(callable, close) for the objectives evaluated on the host."""
    if config.objective.type == "http":
        from convergence_jax.optimize.http import http_objective

        fn = http_objective(config)
        return fn, fn.close
    return load_target(config.objective.target, config.base_dir), lambda: None


def _run_host(
    config,
    me,
    params,
    reward,
    progress,
    records,
    on_generation,
    checkpoint,
    clock,
    society=None,
):
    """Host loop; appends one record per finished generation to ``records``.

    A ``society`` (``optimize.society.Society``) may replace some children before a
    generation is evaluated and adds ``record["society"]`` after it.

    With ``clock["resume"]`` it first restores the run saved in ``checkpoint`` and
    sets ``clock["before"]`` to the seconds that run had taken.
    """
    space = config.space()
    single = reward.names[0] if len(reward.names) == 1 else "score"
    opt = config.optimizer
    init, split, step, finish = _host_programs(
        json.dumps(space.to_dict(), sort_keys=True),
        (
            opt.population_size,
            opt.evaluations_per_generation,
            opt.batch_size,
            opt.selection,
            opt.mutation,
            opt.crossover,
        ),
    )
    state = init(jax.random.key(config.optimizer.seed), params)
    key = jax.random.fold_in(jax.random.key(config.optimizer.seed), 1)
    journal: dict = {}
    if clock["resume"]:
        state, key, done, clock["before"], journal = checkpoint.load(state)
        records += done
    else:
        checkpoint.start_fresh()
    fn, close = _host_objective(config)
    pool = EvaluationPool(config.objective.max_workers)
    start = time.perf_counter()

    def row_of(arm, r) -> dict[str, Any]:
        error, value = r.error, reward.failure_reward
        if error is None:
            try:
                value = reward.combine_one(r.metrics)
            except ValueError as e:
                error = f"ValueError: {e}"
        return {
            "arm": int(arm),
            "config": r.config,
            "metrics": r.metrics,
            "reward": value,
            "error": error,
            "seconds": r.seconds,
            "notes": r.notes,
        }

    def evaluate(population, arms, generation, round_):
        """Evaluate ``arms`` (host ints) of the decoded ``population`` on the host;
        returns their rows and rewards (float32, for the posteriors).

        Evaluations found in the journal of an interrupted run are reused, not
        called again (the replayed proposals are the same: the state and the keys
        are restored).
        """
        configs = [population[a] for a in arms]
        rows: list[dict[str, Any] | None] = [None] * len(configs)
        todo = []
        for slot, c in enumerate(configs):
            entry = journal.get((generation, round_, slot))
            if entry is not None and entry["row"]["config"] == c:
                rows[slot] = entry["row"]
            else:
                todo.append(slot)

        def settled(j, evaluation):
            slot = todo[j]
            rows[slot] = row_of(arms[slot], evaluation)
            checkpoint.record(
                {
                    "generation": generation,
                    "round": round_,
                    "slot": slot,
                    "row": rows[slot],
                }
            )

        if todo:
            evaluate_batch(
                fn,
                [configs[s] for s in todo],
                timeout_s=config.objective.timeout_s,
                single_metric=single,
                on_result=settled,
                pool=pool,
            )
        rewards = np.asarray([row["reward"] for row in rows], np.float32)
        return rows, rewards

    first = len(records)
    bar = tqdm(
        total=config.optimizer.generations,
        initial=min(first, config.optimizer.generations),
        desc="generations",
        disable=not progress,
        unit="gen",
    )
    all_arms = np.arange(me.population_size, dtype=np.int32)
    population = None  # the decoded population of ``state``, when known
    try:
        for g in range(first, config.optimizer.generations):
            key, k_observe, k_evolve = split(key)
            if society is not None:
                state = society.propose(g, state, records)
                population = None
            if population is None:
                population = space.decode(jax.device_get(state.ga.population))
            arms, rows = all_arms, []
            for r in range(me.num_rounds + 1):
                more, rewards = evaluate(population, arms.tolist(), g, r)
                rows += more
                if r == me.num_rounds:
                    break
                state, arms, key, k_next = step(
                    k_observe, state, arms, rewards, key, params
                )
                arms, k_observe = np.asarray(arms), k_next
            state, ended, children = finish(
                k_observe, state, arms, rewards, k_evolve, params
            )
            ended, children = jax.device_get((ended, children))
            record = _generation_record(space, g, ended, rows, population)
            population = space.decode(children)
            if society is not None:
                last = g == config.optimizer.generations - 1
                society.observe(record, records, last=last)
            records.append(record)
            seconds = clock["before"] + time.perf_counter() - start
            checkpoint.save(state, key, records, seconds)
            on_generation(records)
            bar.update(1)
            bar.set_postfix(best=f"{records[-1]['best_posterior_mean']:.4f}")
    finally:
        bar.close()
        pool.close()
        close()
        checkpoint.close()


def _summary(records) -> dict[str, Any]:
    """The best configuration: evaluations pooled over the run (see the report).

    ``mean_reward`` is the raw mean of its evaluations; it is biased upward (the
    winner's curse: of many configurations with noisy means, the one picked is likely
    to have been lucky). ``score``, the ranking score, is that mean shrunk toward the
    run's mean reward by one pseudo-evaluation: the posterior mean under a Normal
    prior centred on the run's mean and worth one evaluation. (The optimizer's own
    Normal-Gamma prior weighs ``1e-3`` of an evaluation, so its posterior mean of the
    winner equals ``mean_reward`` to about ``1e-3 / n`` of the prior gap: no
    correction.)
    """
    best = top_configurations(records, 1)[0]
    rewards = [e["reward"] for r in records for e in r["evaluations"]]
    return {
        "config": best["config"],
        "mean_reward": best["mean_reward"],
        "score": best["score"],
        "run_mean_reward": float(np.mean(rewards)),
        "evaluations": best["evaluations"],
    }


def _write_results(out, config, me, records, status, seconds):
    summary = (
        _summary(records)
        if records
        else {
            "config": None,
            "mean_reward": None,
            "score": None,
            "run_mean_reward": None,
            "evaluations": 0,
        }
    )
    _atomic_write(
        out / "best_config.json",
        json.dumps(
            summary | {"generations_completed": len(records)},
            indent=2,
        ),
    )
    detail = {
        "status": status,
        "seconds": seconds,
        "config": dataclasses.asdict(config),
        "evaluations_per_generation": me.evaluations_per_generation,
        "generations": records,
    }
    if config.society.enabled:
        from convergence_jax.optimize.society import contributions

        detail["society"] = contributions(records)
    # The snapshots written while running are compact (the C encoder; indenting
    # runs the pure-Python one, ~10x slower, every generation); the final is indented.
    indent = None if status == "running" else 1
    _atomic_write(out / "detailed_results.json", json.dumps(detail, indent=indent))


def run_optimization(
    config: OptimizeConfig | dict | str | Path,
    *,
    progress: bool = True,
    write: bool = True,
    resume: bool = False,
    society_backend=None,
) -> OptimizationResult:
    """Run Thompson sampling + evolution as a config describes.

    Args:
      config: an ``OptimizeConfig``, a dict as read from YAML, or a YAML path.
      progress: show a progress bar.
      write: write the output folder (``config.output.dir``).
      resume: continue the run whose checkpoint is in ``config.output.dir``
        (python and http objectives): finished generations are loaded and the
        evaluations of the interrupted generation already settled are reused, so
        none is repeated; for a deterministic objective the results equal those of
        an uninterrupted run.
      society_backend: the society's LLM as any object with the agents' backend
        ``complete(messages, temperature=...)`` (e.g. ``agents.agent.JaxBackend`` over
        a model in memory); default: the one ``config.society.llm`` names.
    """
    if isinstance(config, str | Path):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    else:
        validate(config)
    reward = reward_spec(config)
    host = config.objective.type in ("python", "http")
    if resume and not host:
        raise ConfigError(
            f"--resume: a {config.objective.type} run is one compiled program with no "
            "external calls; run it again instead (same seed, same results)"
        )
    if resume and not write:
        raise ConfigError("--resume: needs the output folder (write=True)")
    me, params = build_optimizer(config, reward)
    out = Path(config.output.dir) if write else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # The running snapshot rewrites every generation so far, so writing it after
    # every generation costs O(generations^2) over a run. It is written when the
    # time since the last one is at least 20 times what that one took (<= ~5% of
    # the run); checkpoint.pkl and the journal, not this file, are what a resume
    # reads, and the final results are always written.
    snapshot = {"next": 0.0}

    def write_snapshot(records):
        now = time.perf_counter()
        if out is None or now < snapshot["next"]:
            return
        _write_results(
            out, config, me, records, "running", clock["before"] + now - start
        )
        took = time.perf_counter() - now
        snapshot["next"] = now + took + 20 * took

    records: list[dict[str, Any]] = []
    status = "interrupted"
    clock = {"before": 0.0, "resume": resume}
    society = None
    try:
        if config.society.enabled:
            from convergence_jax.optimize.society import Society

            society = Society(config, reward, out, backend=society_backend)
        if host:
            state_files = _Checkpoint(out, _fingerprint(config))
            _run_host(
                config,
                me,
                params,
                reward,
                progress,
                records,
                write_snapshot,
                state_files,
                clock,
                society,
            )
        else:
            records += _run_jax(config, me, params, reward, progress)
        status = "complete"
    finally:
        if society is not None:
            society.close()
        seconds = clock["before"] + time.perf_counter() - start
        if out is not None and records:
            _write_results(out, config, me, records, status, seconds)
            if status == "complete":
                write_report(out, config, records, reward)
    best = _summary(records)
    return OptimizationResult(
        best["config"],
        best["mean_reward"],
        best["evaluations"],
        records,
        out,
        seconds,
        best_score=best["score"],
    )
