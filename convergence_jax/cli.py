"""The ``convergence-jax`` command line.

    convergence-jax init [--path convergence.yaml] [--objective python ...]
    convergence-jax optimize CONFIG.yaml [--optimizer.generations 5 ...] [--quiet]
    convergence-jax optimize CONFIG.yaml --resume OUTDIR
    convergence-jax serve [--db runtime.db] [--config bandits.yaml] [--port 8000]
    convergence-jax agents {train,evaluate,serve} ...

Flags after the config file override its values (``--help`` lists them all).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from convergence_jax.optimize.config import (
    ConfigError,
    OptimizeConfig,
    load_config,
    validate,
)

USAGE = """usage: convergence-jax {init,optimize,serve,agents} ...

  init       write a commented starter config (asks questions on a terminal)
  optimize   tune a configuration: convergence-jax optimize CONFIG.yaml [flags]
             (--resume OUTDIR continues an interrupted run)
  serve      the runtime bandit over HTTP: POST /select, POST /update, GET /stats
  agents     train / evaluate / serve a chat agent (an OpenAI-compatible endpoint)

Run `convergence-jax COMMAND --help` for the flags of a command.
"""


@dataclass(frozen=True)
class InitArgs:
    """Write a commented starter YAML config."""

    path: str = "convergence.yaml"
    """Where to write the config."""
    objective: Literal["simulated_llm", "python", "jax", "http"] = "simulated_llm"
    """Objective type: the bundled simulator, a Python callable, a JAX function, or
    an HTTP endpoint (an OpenAI-compatible chat API; also writes test_cases.json)."""
    target: str | None = None
    """'module:function' or 'file.py:function' for python and jax objectives."""
    output_dir: str = "runs/latest"
    """Output folder the config names."""
    force: bool = False
    """Overwrite an existing file."""
    interactive: bool = False
    """Ask questions even when stdin is not a terminal."""
    no_input: bool = False
    """Never ask questions, even on a terminal (use the flags)."""


STARTER = """\
# convergence-jax optimization config. Run it with:
#   convergence-jax optimize {path}
# Any value can be overridden with a flag, e.g. --optimizer.generations 5.

# What to tune. Types: float (min, max, optional log: true), int (min, max),
# categorical (choices).
search_space:
{space}
# What is optimized.
#   simulated_llm: the bundled LLM-API simulator (no network needed)
#   python: a callable f(config: dict) -> {{metric: number}} or a number
#   jax: a vectorized JAX function f(key, params: dict of arrays) -> dict of arrays
#   http: an HTTP endpoint called once per test case (docs/optimize.md)
objective:
{objective}
# Metrics the objective returns, combined into one reward: a weighted sum of metrics
# normalized to [0, 1] between min and max (1 = the best end).
metrics:
{metrics}
# Thompson sampling + evolution.
optimizer:
  generations: 10
  population_size: 16           # configurations per generation (bandit arms)
  evaluations_per_generation: 64  # noisy evaluations spent per generation
  batch_size: 8                 # evaluations per Thompson-sampling round
  elites: 2                     # survive unchanged, keeping their posteriors
  selection: tournament         # tournament | roulette | rank | truncation
  mutation: gaussian            # gaussian | self_adaptive | one_fifth | dropout
  crossover: uniform            # uniform | blend | one_point | average
  seed: 0

output:
  dir: {output_dir}   # best_config.json, detailed_results.json, report.md
  top_k: 10
"""

SIMULATED_SPACE = """\
  temperature: {type: float, min: 0.0, max: 2.0}
  top_p: {type: float, min: 0.1, max: 1.0}
  model: {type: categorical, choices: [small, medium, large]}
  max_tokens: {type: int, min: 64, max: 2048}
"""
SIMULATED_METRICS = """\
  quality: {goal: maximize, weight: 0.6, min: 0.0, max: 1.0}
  latency_ms: {goal: minimize, weight: 0.25, min: 0.0, max: 15000.0}
  cost_usd: {goal: minimize, weight: 0.15, min: 0.0, max: 0.01}
"""
GENERIC_SPACE = """\
  learning_rate: {type: float, min: 1.0e-5, max: 1.0e-1, log: true}
  layers: {type: int, min: 1, max: 8}
  activation: {type: categorical, choices: [relu, tanh, gelu]}
"""
GENERIC_METRICS = """\
  score: {goal: maximize, weight: 1.0, min: 0.0, max: 1.0}
"""
CALLABLE_OBJECTIVE = """\
  type: {objective}
  target: {target}
  timeout_s: 60       # python: a call running longer is recorded as failed
  max_workers: 4      # python: calls evaluated at the same time
"""
SIMULATED_OBJECTIVE = """\
  type: simulated_llm
  timeout_s: 60
  max_workers: 4
"""
HTTP_SPACE = """\
  temperature: {type: float, min: 0.0, max: 1.5}
  top_p: {type: float, min: 0.5, max: 1.0}
  model: {type: categorical, choices: [gpt-4o-mini, gpt-4.1-mini]}
  max_tokens: {type: int, min: 8, max: 256}
"""
HTTP_OBJECTIVE = """\
  type: http
  timeout_s: 180      # one evaluation: every test case, retries included
  max_workers: 4      # evaluations at once
  api:
    preset: openai_chat                  # POST {base_url}/chat/completions with
    base_url: https://api.openai.com/v1  # every tuned parameter in the body
    # the key is read from this environment variable only (never written anywhere);
    # a local server (vLLM, Ollama, ...): its base_url and auth: {type: none}
    auth: {type: bearer, token_env: OPENAI_API_KEY}
    request:                             # {input} is each test case's input
      messages:
        - {role: system, content: "Answer with the answer only, no explanation."}
        - {role: user, content: "{input}"}
    request_timeout_s: 30
    retries: 3                           # 429, 5xx, timeouts: backoff with jitter
  test_cases: test_cases.json  # next to this file: [{"input": ..., "expected": ...}]
  judge: {type: contains, ignore_case: true}  # exact | contains | regex | json_field |
                                              # python | llm
"""
HTTP_METRICS = """\
  quality: {goal: maximize, weight: 0.8, min: 0.0, max: 1.0}
  latency_ms: {goal: minimize, weight: 0.2, min: 0.0, max: 5000.0}
"""
HTTP_TEST_CASES = [
    {"id": "arith", "input": "What is 17 * 23?", "expected": "391"},
    {"id": "capital", "input": "Capital of Australia?", "expected": "Canberra"},
    {"id": "element", "input": "Which element is W?", "expected": "tungsten"},
]


def starter_yaml(args: InitArgs) -> str:
    if args.objective == "simulated_llm":
        space, objective, metrics = (
            SIMULATED_SPACE,
            SIMULATED_OBJECTIVE,
            SIMULATED_METRICS,
        )
    elif args.objective == "http":
        space, objective, metrics = HTTP_SPACE, HTTP_OBJECTIVE, HTTP_METRICS
    else:
        target = args.target or "my_objective.py:evaluate"
        objective = CALLABLE_OBJECTIVE.format(objective=args.objective, target=target)
        space, metrics = GENERIC_SPACE, GENERIC_METRICS
    return STARTER.format(
        path=args.path,
        space=space,
        objective=objective,
        metrics=metrics,
        output_dir=args.output_dir,
    )


def _ask(prompt: str, default: str, choices: tuple[str, ...] | None = None) -> str:
    while True:
        hint = f" [{'/'.join(choices)}]" if choices else ""
        answer = input(f"{prompt}{hint} ({default}): ").strip() or default
        if choices is None or answer in choices:
            return answer
        print(f"  please answer one of {', '.join(choices)}")


def init(argv: list[str]) -> int:
    args = tyro.cli(InitArgs, args=argv, prog="convergence-jax init")
    interactive = not args.no_input and (args.interactive or sys.stdin.isatty())
    if interactive:
        objective = _ask(
            "objective type", args.objective, ("simulated_llm", "python", "jax", "http")
        )
        target = args.target
        if objective in ("python", "jax"):
            target = _ask("target (module:function or file.py:function)", target or "")
        args = dataclasses.replace(
            args,
            objective=objective,
            target=target or None,
            output_dir=_ask("output folder", args.output_dir),
            path=_ask("write config to", args.path),
        )
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    path.write_text(starter_yaml(args))
    print(f"wrote {path}; run: convergence-jax optimize {path}")
    if args.objective == "http":
        cases = path.parent / "test_cases.json"
        if cases.exists():
            print(f"kept {cases} (the test cases the config names)")
        else:
            cases.write_text(json.dumps(HTTP_TEST_CASES, indent=1) + "\n")
            print(f"wrote {cases}: replace these with your own test cases")
        print("set the API key first: export OPENAI_API_KEY=...")
    return 0


def optimize(argv: list[str]) -> int:
    from convergence_jax.optimize.run import run_optimization

    quiet = "--quiet" in argv
    argv = [a for a in argv if a != "--quiet"]
    resume = None
    for i, a in enumerate(argv):
        if a == "--resume" or a.startswith("--resume="):
            if a == "--resume":
                if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                    print("error: --resume needs the output folder", file=sys.stderr)
                    return 2
                resume, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
            else:
                resume, argv = a.split("=", 1)[1], argv[:i] + argv[i + 1 :]
            break
    prog = "convergence-jax optimize CONFIG.yaml [--resume OUTDIR]"
    if not argv or argv[0].startswith("-"):
        if any(a in ("-h", "--help") for a in argv):
            tyro.cli(OptimizeConfig, args=argv, prog=prog)
        print(f"usage: {prog} [flags]  (see --help)", file=sys.stderr)
        return 2
    try:
        base = load_config(argv[0])
        config = tyro.cli(OptimizeConfig, default=base, args=argv[1:], prog=prog)
        # Suppressed (YAML-only) fields come from the file.
        objective = dataclasses.replace(
            config.objective,
            api=dataclasses.replace(
                config.objective.api, request=base.objective.api.request
            ),
        )
        config = dataclasses.replace(
            config, search_space=base.search_space, objective=objective
        )
        if resume is not None:
            output = dataclasses.replace(config.output, dir=resume)
            config = dataclasses.replace(config, output=output)
        validate(config)
        result = run_optimization(config, progress=not quiet, resume=resume is not None)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"best configuration (mean reward {result.best_reward:.4f} over "
        f"{result.best_evaluations} evaluations, biased upward; shrunk score "
        f"{result.best_score:.4f}):"
    )
    print(json.dumps(result.best_config, indent=2))
    print(f"results in {result.output_dir}/ (report.md, detailed_results.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "init":
        return init(rest)
    if command == "optimize":
        return optimize(rest)
    if command == "serve":
        from convergence_jax.runtime.serve import serve

        return serve(rest)
    if command == "agents":
        from convergence_jax.agents.cli import main as agents_main

        return agents_main(rest)
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
