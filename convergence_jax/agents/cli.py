"""``convergence-jax agents``: train, evaluate and serve agent checkpoints.

    convergence-jax agents train CONFIG.yaml [--train.steps 500 ...]
    convergence-jax agents evaluate --checkpoint DIR --message "Where is my order?"
    convergence-jax agents evaluate --checkpoint DIR --messages-file chat.json
    convergence-jax agents serve --checkpoint DIR [--host 127.0.0.1] [--port 8000]

``serve`` is an OpenAI-compatible chat endpoint (`agents.serve`): point any
OpenAI client, or ``convergence-jax optimize`` with the ``openai_chat`` preset, at
``http://HOST:PORT/v1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from convergence_jax.optimize.config import ConfigError

USAGE = """usage: convergence-jax agents {train,evaluate,serve} ...

  train      fine-tune an agent on demonstrations (a YAML config; flags override)
  evaluate   answer one conversation with an agent checkpoint
  serve      an OpenAI-compatible chat endpoint: POST /v1/chat/completions

Run `convergence-jax agents COMMAND --help` for the flags of a command.
"""


@dataclass(frozen=True)
class EvaluateArgs:
    """Answer one conversation with an agent checkpoint."""

    checkpoint: str
    """The agent checkpoint folder (`agents train` writes one)."""
    message: str | None = None
    """One user message."""
    messages_file: str | None = None
    """A JSON file: a list of {"role", "content"} messages (OpenAI's format)."""
    temperature: float | None = None
    """Sampling temperature (default: the checkpoint's)."""
    top_p: float | None = None
    """Nucleus mass (default: the checkpoint's)."""
    max_tokens: int | None = None
    """Answer length (default: the checkpoint's)."""
    seed: int | None = None
    """Sampling seed (a fixed seed gives the same answer)."""
    json: bool = False
    """Print the reply with its token counts and finish reason as JSON."""


@dataclass(frozen=True)
class AgentServeArgs:
    """Serve an agent checkpoint as an OpenAI-compatible chat endpoint."""

    checkpoint: str
    """The agent checkpoint folder."""
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = 8000
    """Port to listen on."""
    api_key_env: str = "CONVERGENCE_AGENT_API_KEY"
    """Environment variable holding the API key (sent as 'Authorization: Bearer
    KEY'). Unset or empty: the endpoint is open to anyone who reaches the port."""
    seed: int = 0
    """Key of the sampler (requests without a seed draw fresh samples from it)."""
    log_level: str = "warning"
    """uvicorn log level."""
    warmup: bool = True
    """Answer one short conversation before listening, so that the first
    request does not wait for the compilation."""


def train(argv: list[str]) -> int:
    from convergence_jax.agents.train import (
        AgentTrainConfig,
        load_train_config,
        train_agent,
    )

    prog = "convergence-jax agents train CONFIG.yaml"
    quiet = "--quiet" in argv
    argv = [a for a in argv if a != "--quiet"]
    if not argv or argv[0].startswith("-"):
        if any(a in ("-h", "--help") for a in argv):
            tyro.cli(AgentTrainConfig, args=argv, prog=prog)
        print(f"usage: {prog} [flags] [--quiet]  (see --help)", file=sys.stderr)
        return 2
    try:
        base = load_train_config(argv[0])
        config = tyro.cli(AgentTrainConfig, default=base, args=argv[1:], prog=prog)
        config = dataclasses.replace(config, base_dir=base.base_dir)
        train_agent(config, progress=None if quiet else print)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def evaluate(argv: list[str]) -> int:
    from convergence_jax.agents.export import AgentCheckpointError, load_chat_agent

    args = tyro.cli(EvaluateArgs, args=argv, prog="convergence-jax agents evaluate")
    if (args.message is None) == (args.messages_file is None):
        print("error: give one of --message or --messages-file", file=sys.stderr)
        return 2
    if args.message is not None:
        messages = [{"role": "user", "content": args.message}]
    else:
        path = Path(args.messages_file)
        try:
            messages = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            print(
                f"error: --messages-file: no such file {str(path)!r}", file=sys.stderr
            )
            return 2
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            print(
                f"error: --messages-file: {path} is not JSON: {error}", file=sys.stderr
            )
            return 2
    try:
        agent, _ = load_chat_agent(args.checkpoint, seed=args.seed or 0)
        context = {
            k: v
            for k, v in (
                ("temperature", args.temperature),
                ("top_p", args.top_p),
                ("max_tokens", args.max_tokens),
                ("seed", args.seed),
            )
            if v is not None
        }
        completion = agent.complete(messages, context=context)
    except (AgentCheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(completion._asdict(), ensure_ascii=False))
    else:
        print(completion.text)
    return 0


def chat_server(args: AgentServeArgs, announce=print):
    """The ``uvicorn.Server`` that `serve` runs for ``args`` (loaded, warmed up,
    not started): ``server.run()`` listens on ``args.host:args.port``, or
    ``server.run(sockets=[sock])`` on an open socket. Raises
    `agents.export.AgentCheckpointError` for a bad checkpoint."""
    import uvicorn

    from convergence_jax.agents.export import load_chat_agent
    from convergence_jax.agents.serve import create_chat_app

    agent, meta = load_chat_agent(args.checkpoint, seed=args.seed)
    api_key = os.environ.get(args.api_key_env) or None
    if args.warmup:
        start = time.perf_counter()
        agent.complete([{"role": "user", "content": "Hello"}])
        announce(f"compiled the generation in {time.perf_counter() - start:.1f} s")
    access = (
        f"key from ${args.api_key_env}"
        if api_key
        else f"OPEN: ${args.api_key_env} is not set, no key is checked"
    )
    announce(
        f"serving agent {meta.name!r} from {args.checkpoint} on "
        f"http://{args.host}:{args.port}/v1 ({access})"
    )
    config = uvicorn.Config(
        create_chat_app(agent, meta.name, api_key),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
    )
    return uvicorn.Server(config)


def serve(argv: list[str]) -> int:
    from convergence_jax.agents.export import AgentCheckpointError

    args = tyro.cli(AgentServeArgs, args=argv, prog="convergence-jax agents serve")
    try:
        server = chat_server(args, announce=lambda line: print(line, flush=True))
    except (AgentCheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    server.run()
    return 0


def main(argv: list[str]) -> int:
    """``convergence-jax agents ...``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"train": train, "evaluate": evaluate, "serve": serve}
    if command not in commands:
        print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return commands[command](rest)
