"""Function calling: tool schemas, tool calls parsed from a model's text, a tool
loop that records every call (host side).

A `Tool` is an OpenAI function schema (``name``, ``description``,
``parameters``: a JSON schema of an object) and the Python function that runs
it. `ToolAgent` tells the model which tools it has (a system message listing the
schemas and the call format), parses each answer with `parse_tool_calls`, checks
the arguments against the schema, runs the tools and feeds their results back as
``tool`` messages (with ``tool_call_id``), until the model answers in plain text
or ``max_tool_rounds`` rounds of calls have run.

Accepted call forms (see `parse_tool_calls`), anywhere in the model's text:

- ``{"tool": "lookup", "arguments": {"order_id": "A1"}}``;
- ``{"name": "lookup", "arguments": {...}}`` (``"parameters"`` is read as
  ``"arguments"`` too);
- OpenAI's ``{"function": {"name": "lookup", "arguments": "{\\"order_id\\": ...}"}}``
  (arguments as a JSON string or an object), or ``{"tool_call": {...}}``;
- a JSON list of these (several calls in one round);
- inside a ```` ```json ```` fence, a ``<tool_call>...</tool_call>`` tag, or with
  text around it.

A bad call -- JSON that does not parse, an unknown tool, arguments that miss a
required property or have the wrong type -- and a tool that raises are recorded
in the trajectory as a ``tool`` message whose content is ``{"error": ...}`` and
whose metadata names the error (``error_type``: ``parse_error``,
``unknown_tool``, ``bad_arguments``, ``tool_raised``); the episode goes on.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from convergence_jax.agents.agent import MultiTurnAgent, Plan, check_messages
from convergence_jax.agents.trajectory import Turn

JSON_TYPES = ("string", "number", "integer", "boolean", "array", "object", "null")
ERROR_TYPES = ("parse_error", "unknown_tool", "bad_arguments", "tool_raised")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Text that tries to call a tool: a tag, or a JSON object opening with a call key.
_ATTEMPT = re.compile(
    r"<tool_call>|\{\s*\"(?:tool|name|function|tool_call)\"\s*:", re.IGNORECASE
)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------


def _check_property_schema(schema, where: str) -> None:
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} must be a JSON-schema object, got {schema!r}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in JSON_TYPES:
            raise ValueError(f"{where}.type: {k!r} is not one of {JSON_TYPES}")
    if (
        kind is None
        and "enum" not in schema
        and not any(
            key in schema for key in ("anyOf", "oneOf", "allOf", "$ref", "const")
        )
    ):
        raise ValueError(f"{where} needs a 'type' (one of {JSON_TYPES}) or an 'enum'")
    if "enum" in schema and (
        not isinstance(schema["enum"], list) or not schema["enum"]
    ):
        raise ValueError(f"{where}.enum must be a non-empty list")
    if "properties" in schema or "object" in kinds:
        _check_object_schema(schema, where)
    if "items" in schema:
        _check_property_schema(schema["items"], f"{where}.items")


def _check_object_schema(schema, where: str) -> None:
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ValueError(f"{where}.properties must be an object")
    for name, sub in properties.items():
        _check_property_schema(sub, f"{where}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"{where}.required must be a list of property names")
    missing = [r for r in required if r not in properties]
    if missing:
        raise ValueError(f"{where}.required names {missing}, not in its properties")


def _type_ok(value, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return value is None  # "null"


def check_arguments(schema: Mapping, arguments, where: str = "arguments") -> list[str]:
    """The problems of ``arguments`` against a JSON schema (an empty list when
    they fit): required properties, types (``type`` or a list of types),
    ``enum``, ``additionalProperties: false``, nested objects and array items.
    Other keywords (``anyOf``, ``pattern``, ...) are not checked."""
    problems: list[str] = []
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if kinds and not any(_type_ok(arguments, k) for k in kinds):
        got = type(arguments).__name__
        return [f"{where} must be {' or '.join(kinds)}, got {got} {arguments!r}"]
    if "enum" in schema and arguments not in schema["enum"]:
        problems.append(f"{where} must be one of {schema['enum']}, got {arguments!r}")
    if isinstance(arguments, dict) and ("properties" in schema or "object" in kinds):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in arguments:
                problems.append(f"{where}: missing required property {name!r}")
        if schema.get("additionalProperties") is False:
            extra = sorted(set(arguments) - set(properties))
            if extra:
                problems.append(
                    f"{where}: unexpected properties {extra}; allowed: "
                    f"{sorted(properties)}"
                )
        for name, value in arguments.items():
            if name in properties:
                problems += check_arguments(properties[name], value, f"{where}.{name}")
    if isinstance(arguments, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(arguments):
            problems += check_arguments(schema["items"], item, f"{where}[{i}]")
    return problems


@dataclasses.dataclass(frozen=True)
class Tool:
    """A callable tool: its OpenAI function schema and ``fn(**arguments)``
    (sync or async; its result should be JSON-serializable, else ``str`` of it
    is sent)."""

    name: str
    description: str
    parameters: dict
    fn: Callable

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"tool name must match [A-Za-z0-9_-]{{1,64}}, got {self.name!r}"
            )
        if not isinstance(self.description, str):
            raise ValueError(f"tool {self.name!r}: description must be a string")
        parameters = self.parameters
        if not isinstance(parameters, Mapping):
            raise ValueError(
                f"tool {self.name!r}: parameters must be a JSON schema object"
            )
        if parameters.get("type", "object") != "object":
            raise ValueError(
                f"tool {self.name!r}: parameters.type must be 'object', got "
                f"{parameters.get('type')!r}"
            )
        _check_object_schema(parameters, f"tool {self.name!r}: parameters")
        object.__setattr__(self, "parameters", {"type": "object", **parameters})
        if not callable(self.fn):
            raise ValueError(f"tool {self.name!r}: fn must be callable")

    @classmethod
    def from_schema(cls, schema: Mapping | str, fn: Callable) -> Tool:
        """A tool from an OpenAI function schema -- ``{"type": "function",
        "function": {"name", "description", "parameters"}}`` or the inner
        ``{"name", ...}`` -- as a dict or a JSON string. A schema that does not
        parse or validate raises ``ValueError``."""
        if isinstance(schema, str | bytes):
            try:
                schema = json.loads(schema)
            except ValueError as error:
                raise ValueError(f"tool schema is not valid JSON: {error}") from None
        if not isinstance(schema, Mapping):
            raise ValueError(
                f"a tool schema must be a JSON object, got {type(schema).__name__}"
            )
        if schema.get("type") == "function" or "function" in schema:
            inner = schema.get("function")
            if not isinstance(inner, Mapping):
                raise ValueError("tool schema: 'function' must be an object")
            schema = inner
        unknown = sorted(set(schema) - {"name", "description", "parameters", "strict"})
        if unknown:
            raise ValueError(
                f"tool schema has unknown keys {unknown}; expected name, "
                "description, parameters"
            )
        if "name" not in schema:
            raise ValueError("tool schema needs a 'name'")
        return cls(
            name=schema["name"],
            description=schema.get("description", ""),
            parameters=dict(schema.get("parameters", {"type": "object"})),
            fn=fn,
        )

    def schema(self) -> dict:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


class ToolCall(NamedTuple):
    """One parsed call: the tool's name and its arguments (a dict, or
    whatever the model sent when that is not an object)."""

    name: str
    arguments: Any


class ParsedOutput(NamedTuple):
    """`parse_tool_calls`'s result: the calls found, and ``error`` when the text
    tried to call a tool but no call could be read (``calls`` is then empty).
    ``is_call`` is True for either."""

    calls: list[ToolCall]
    error: str | None

    @property
    def is_call(self) -> bool:
        return bool(self.calls) or self.error is not None


def _json_values(text: str) -> list[Any]:
    """Every top-level JSON object or list that parses in ``text``."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            out.append(value)
            i = end
        else:
            i += 1
    return out


def _as_call(value) -> ToolCall | str | None:
    """A `ToolCall`, an error message (a call object that is malformed), or None
    (not a call)."""
    if not isinstance(value, Mapping):
        return None
    if "tool_call" in value and isinstance(value["tool_call"], Mapping):
        value = value["tool_call"]
    if "function" in value and isinstance(value["function"], Mapping):
        value = value["function"]
    name = value.get("tool", value.get("name"))
    if name is None:
        return None
    if not isinstance(name, str):
        return f"the tool name must be a string, got {name!r}"
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as error:
            return f"the arguments of {name!r} are not valid JSON: {error}"
    return ToolCall(name, arguments)


def parse_tool_calls(text: str) -> ParsedOutput:
    """The tool calls in a model's output (the forms in the module docstring).

    Text without a call attempt (no ``<tool_call>`` tag and no JSON object
    opening with ``"tool"``, ``"name"``, ``"function"`` or ``"tool_call"``) is
    a plain answer: no calls, no error. An attempt whose JSON does not parse
    gives ``error``. Fenced and tagged blocks are read first; otherwise every
    JSON value in the text is tried.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not _ATTEMPT.search(text):
        return ParsedOutput([], None)
    blocks = [m.group(1) for m in _TAG.finditer(text)]
    blocks += [m.group(1) for m in _FENCE.finditer(text)]
    values = []
    for block in blocks or [text]:
        values += _json_values(block)
    if blocks and not values:
        values = _json_values(text)
    calls, problems = [], []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            call = _as_call(item)
            if isinstance(call, ToolCall):
                calls.append(call)
            elif isinstance(call, str):
                problems.append(call)
    if problems:
        return ParsedOutput([], "; ".join(problems))
    if calls:
        return ParsedOutput(calls, None)
    snippet = text.strip()[:200]
    return ParsedOutput(
        [],
        f'the tool call is not valid JSON (expected {{"tool": name, '
        f'"arguments": {{...}}}}): {snippet!r}',
    )


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------

TOOL_PROMPT = (
    "You can call these tools:\n{tools}\n\nTo call a tool, reply with only a JSON "
    'object: {{"tool": "<name>", "arguments": {{...}}}}. Each result comes back '
    "in a tool message. When you have what you need, answer the user in plain "
    "text."
)


def _as_tools(tools) -> dict[str, Tool]:
    if isinstance(tools, Mapping | str) or not isinstance(tools, Sequence):
        raise ValueError(
            "tools must be a list of Tool or (schema, fn) pairs, got "
            f"{type(tools).__name__}"
        )
    out: dict[str, Tool] = {}
    for i, entry in enumerate(tools):
        if isinstance(entry, Tool):
            tool = entry
        elif isinstance(entry, tuple | list) and len(entry) == 2:
            try:
                tool = Tool.from_schema(*entry)
            except ValueError as error:
                raise ValueError(f"tools[{i}]: {error}") from None
        else:
            raise ValueError(f"tools[{i}] must be a Tool or a (schema, fn) pair")
        if tool.name in out:
            raise ValueError(f"tools[{i}]: a second tool named {tool.name!r}")
        out[tool.name] = tool
    if not out:
        raise ValueError("ToolAgent needs at least one tool")
    return out


def _run(fn, arguments):
    from convergence_jax.agents.rewards import _run_sync

    value = fn(**arguments)
    if inspect.isawaitable(value):
        value = _run_sync(value)
    return value


class ToolAgent(MultiTurnAgent):
    """A `MultiTurnAgent` that calls tools.

    Args:
        backend, system_prompt, plan: as for `MultiTurnAgent`.
        tools: a list of `Tool` or ``(schema, fn)`` pairs (`Tool.from_schema`).
        max_tool_rounds: the most rounds of tool calls in one response; a model
            that still calls tools after them ends the response with that call
            unrun (``metadata["stop_reason"] == "max_tool_rounds"``).
        tool_prompt: the text listing the tools (``{tools}`` is the schemas as
            JSON), appended to the leading system message (the agent's system
            prompt, or the conversation's own system message), or sent as the
            system message when there is none.

    `respond` returns every new turn: each assistant message that called tools
    (``metadata["tool_calls"]``: id, name, arguments), each ``tool`` message
    (``name``, ``tool_call_id``, content the JSON result or ``{"error": ...}``;
    ``metadata``: ``ok``, ``error_type``, ``error``), then the plain answer.
    `generate_response` returns the final text.
    """

    def __init__(
        self,
        backend,
        tools,
        system_prompt: str | None = None,
        plan: Plan | Mapping | None = None,
        max_tool_rounds: int = 3,
        tool_prompt: str = TOOL_PROMPT,
    ):
        self.tools = _as_tools(tools)
        if (
            isinstance(max_tool_rounds, bool)
            or not isinstance(max_tool_rounds, int)
            or max_tool_rounds < 0
        ):
            raise ValueError(
                f"max_tool_rounds must be an int >= 0, got {max_tool_rounds!r}"
            )
        if not isinstance(tool_prompt, str) or "{tools}" not in tool_prompt:
            raise ValueError("tool_prompt must be a string containing '{tools}'")
        listing = json.dumps([t.schema()["function"] for t in self.tools.values()])
        self.tools_message = tool_prompt.format(tools=listing)
        super().__init__(backend, system_prompt=system_prompt, plan=plan)
        self.max_tool_rounds = max_tool_rounds
        self.calls_made = 0

    def prompt(self, messages, conversation_id: str = "default") -> list[dict]:
        """As `MultiTurnAgent.prompt`, with the tool listing appended to the
        leading system message (the agent's or the conversation's own)."""
        out = super().prompt(messages, conversation_id)
        if out[0]["role"] == "system":
            first = out[0]
            out[0] = {**first, "content": f"{first['content']}\n\n{self.tools_message}"}
        else:
            out.insert(0, {"role": "system", "content": self.tools_message})
        return out

    def execute(self, call: ToolCall, call_id: str) -> Turn:
        """Check and run one call; a ``tool`` turn with its result or error."""
        tool = self.tools.get(call.name)
        if tool is None:
            return self._error_turn(
                call_id,
                call.name,
                "unknown_tool",
                f"unknown tool {call.name!r}; available: {sorted(self.tools)}",
            )
        if not isinstance(call.arguments, dict):
            problems = [f"arguments must be a JSON object, got {call.arguments!r}"]
        else:
            problems = check_arguments(tool.parameters, call.arguments)
        if problems:
            return self._error_turn(
                call_id, call.name, "bad_arguments", "; ".join(problems)
            )
        try:
            result = _run(tool.fn, call.arguments)
        except Exception as error:  # a user's tool: record it, never crash
            return self._error_turn(
                call_id, call.name, "tool_raised", f"{type(error).__name__}: {error}"
            )
        try:
            content = result if isinstance(result, str) else json.dumps(result)
        except (TypeError, ValueError):
            content = str(result)
        return Turn(
            "tool",
            content,
            name=call.name,
            tool_call_id=call_id,
            metadata={"ok": True, "arguments": call.arguments},
        )

    @staticmethod
    def _error_turn(call_id, name, error_type, message) -> Turn:
        return Turn(
            "tool",
            json.dumps({"error": message}),
            name=name,
            tool_call_id=call_id,
            metadata={"ok": False, "error_type": error_type, "error": message},
        )

    def respond(self, messages, context=None) -> list[Turn]:
        """Every turn of this response (tool calls, results, the answer)."""
        history = check_messages(messages)
        new: list[Turn] = []
        for round_ in range(self.max_tool_rounds + 1):
            completion = self.complete(history, context)
            # Plan changes apply once per response, not once per tool round.
            if context:
                context = {
                    k: v
                    for k, v in context.items()
                    if k not in ("plan", "advance_plan")
                }
            usage = {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason,
            }
            parsed = parse_tool_calls(completion.text)
            if not parsed.is_call:
                new.append(Turn("assistant", completion.text, metadata=usage))
                return new
            if round_ == self.max_tool_rounds:
                new.append(
                    Turn(
                        "assistant",
                        completion.text,
                        metadata={**usage, "stop_reason": "max_tool_rounds"},
                    )
                )
                return new
            ids = [
                f"call_{self.calls_made + i}" for i in range(max(1, len(parsed.calls)))
            ]
            self.calls_made += len(ids)
            calls_meta = [
                {"id": i, "name": c.name, "arguments": c.arguments}
                for i, c in zip(ids, parsed.calls, strict=False)
            ]
            assistant = Turn(
                "assistant",
                completion.text,
                metadata={**usage, "tool_calls": calls_meta},
            )
            if parsed.error is not None:
                results = [self._error_turn(ids[0], None, "parse_error", parsed.error)]
            else:
                results = [
                    self.execute(c, i) for c, i in zip(parsed.calls, ids, strict=True)
                ]
            new.append(assistant)
            new += results
            history += [assistant.message(), *(t.message() for t in results)]
        raise AssertionError("unreachable")

    def generate_response(self, messages, context=None) -> str:
        return self.respond(messages, context)[-1].content
