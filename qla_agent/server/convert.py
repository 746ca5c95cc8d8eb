"""Wire schemas → engine records: every check that needs more than the schema happens here.

tool_choice is enforced like this:
- `auto`: the tools go into the prompt and the completion is parsed for tool calls.
- `none`: the tools stay in the prompt (so a session's prefix does not change between turns) but
  `<tool_call>` is a stop string, so the model cannot start a call; the text is returned as content.
- `required` / a named function: validated (the tools exist, the name is one of them); the tool list
  goes into the prompt as for `auto`, the answer is started with the call (`output.shape_output`)
  and the parsed calls are filtered to the named function.
`parallel_tool_calls=false` and a named function return one call: generation stops right after the
first `</tool_call>` (a `stop_after` string, kept in the text), so the session stores what the
client gets and its next turn (the call's result) continues that history. The call filter behind
it drops nothing then; it stays as a guard.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qla_agent.runtime.requests import ChatRequest, SamplingParams
from qla_agent.runtime.sessions import SessionOptions
from qla_agent.runtime.state import MemoryPolicy
from qla_agent.server.errors import ApiError
from qla_agent.server.schemas import ChatCompletionRequest, Message, NamedToolChoice, Tool
from qla_agent.server.settings import ServerSettings
from qla_agent.tools.parsers.calls import TOOL_CLOSE, TOOL_OPEN

logger = logging.getLogger(__name__)

RESERVED_TEMPLATE_KWARGS = frozenset({
    "messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
    "tokenize", "return_dict", "chat_template", "bos_token", "eos_token",
})


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """How this request treats tool calls in the completion."""

    mode: Literal["none", "auto", "required", "named"]
    name: str | None = None
    parallel: bool = True

    @property
    def parse(self) -> bool:
        return self.mode != "none"

    @property
    def one_call(self) -> bool:
        """At most one call comes back: a named function, or parallel calls turned off."""
        return self.mode == "named" or (self.mode != "none" and not self.parallel)


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """What a request that leaves a sampling field out gets: OpenAI's defaults, or the model's own
    recommendation from its generation_config.json (as vLLM does)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_model_dir(cls, model_dir: str | Path | None) -> SamplingDefaults:
        """Read generation_config.json when the folder has one (and it does not turn sampling off)."""
        path = Path(model_dir) / "generation_config.json" if model_dir is not None else None
        if path is None or not path.is_file():
            return cls()
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable %s: %s", path, e)
            return cls()
        if not isinstance(config, dict) or config.get("do_sample") is False:
            return cls()
        picked = {f: config[f] for f in cls.__dataclass_fields__
                  if isinstance(config.get(f), (int, float)) and not isinstance(config.get(f), bool)}
        try:
            return cls(**picked)
        except TypeError:
            return cls()


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """One validated chat completion: the engine request plus how to shape the answer.

    `tools` and `template_kwargs` are what the prompt is rendered with: the request's, or for a
    session the session's own tools (when the request sends none) and options updated by the request's.
    """

    request: ChatRequest
    model: str
    stream: bool
    include_usage: bool
    policy: ToolPolicy
    tools: list[dict[str, Any]] | None
    template_kwargs: dict[str, Any]


def plan_chat(body: ChatCompletionRequest, *, settings: ServerSettings, model_id: str,
              served_names: tuple[str, ...], session_id: str | None = None,
              session: SessionOptions | None = None, defaults: SamplingDefaults = SamplingDefaults()) -> ChatPlan:
    """Check a chat request against the server's limits and build the engine's ChatRequest.

    `session_id` is the resolved id (see `resolve_session_id`), `session` that session's tools and options.
    """
    _refuse_unsupported(body)
    model = _check_model(body.model, model_id, served_names)
    request_tools = [tool_dict(t) for t in body.tools] if body.tools else None
    tools = request_tools if request_tools is not None or session is None else _session_tools(session)
    policy = _tool_policy(body, tools)
    stops = _stops(body, policy, tools)
    if not body.messages and session_id is None:
        raise ApiError(400, "messages is empty: send at least one message, or a session_id (with "
                       "keep_messages to regenerate or edit its last turn)", param="messages")
    if body.keep_messages is not None and session_id is None:
        raise ApiError(400, "keep_messages trims a session's stored messages: it needs a session_id",
                       param="keep_messages")
    kwargs = template_kwargs(body.chat_template_kwargs, body.enable_thinking, body.reasoning_effort)
    request = ChatRequest(
        messages=[message_dict(m, i) for i, m in enumerate(body.messages)],
        tools=request_tools,
        sampling=_sampling(body, settings, stops, policy, defaults),
        session_id=session_id,
        template_kwargs=kwargs,
        keep_messages=body.keep_messages,
        policy=memory_policy(body.memory_policy, settings),
    )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    effective_kwargs = {**(session.template_kwargs if session is not None else {}), **kwargs}
    return ChatPlan(request=request, model=model, stream=bool(body.stream), include_usage=include_usage,
                    policy=policy, tools=tools, template_kwargs=effective_kwargs)


def resolve_session_id(body: ChatCompletionRequest, header_id: str | None) -> str | None:
    """The session a request continues: `session_id` in the body or the X-Session-Id header."""
    if header_id is not None and body.session_id is not None and header_id != body.session_id:
        raise ApiError(400, f"session_id {body.session_id!r} in the body and X-Session-Id {header_id!r} "
                       "differ; send one of them", param="session_id")
    return body.session_id if body.session_id is not None else header_id


def memory_policy(kind: str | None, settings: ServerSettings) -> MemoryPolicy | None:
    """The memory policy a new session gets (None: the engine's default, set from the settings)."""
    if kind is None:
        return None
    return MemoryPolicy(kind=kind, sink_tokens=settings.sink_tokens, window_tokens=settings.window_tokens)


def message_dict(message: Message, index: int) -> dict[str, Any]:
    """One wire message as the plain dict the chat template reads (arguments as a mapping)."""
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
    text = message.text()
    out["content"] = "" if text is None else text
    if message.name is not None:
        out["name"] = message.name
    reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
    if message.role == "assistant" and reasoning is not None:
        out["reasoning_content"] = reasoning
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name,
                          "arguments": _arguments(call.function.arguments, f"messages[{index}].tool_calls[{j}]")}}
            for j, call in enumerate(message.tool_calls)
        ]
    return out


def tool_dict(tool: Tool) -> dict[str, Any]:
    """A tool definition in OpenAI's dict shape, which the chat templates render."""
    return tool.model_dump(exclude_none=True)


def template_kwargs(kwargs: dict[str, Any] | None, enable_thinking: bool | None,
                    reasoning_effort: str | None) -> dict[str, Any]:
    """Merge chat_template_kwargs with the thinking switches (`enable_thinking` wins)."""
    out = dict(kwargs or {})
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(out))
    if reserved:
        raise ApiError(400, f"chat_template_kwargs may not set {reserved}: the server sets them",
                       param="chat_template_kwargs")
    if reasoning_effort is not None and "enable_thinking" not in out:
        out["enable_thinking"] = reasoning_effort not in ("none", "minimal")
    if enable_thinking is not None:
        out["enable_thinking"] = enable_thinking
    return out


def _arguments(raw: str | dict[str, Any], where: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise ApiError(400, f"{where}.function.arguments is not valid JSON ({e.msg} at {e.pos}): {raw[:80]!r}",
                       param=f"{where}.function.arguments") from e
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}.function.arguments must encode a JSON object, got {type(value).__name__}",
                       param=f"{where}.function.arguments")
    return value


def _sampling(body: ChatCompletionRequest, settings: ServerSettings, stops: tuple[str, ...],
              policy: ToolPolicy, defaults: SamplingDefaults) -> SamplingParams:
    def pick(name: str) -> Any:
        value = getattr(body, name)
        return getattr(defaults, name) if value is None else value

    return SamplingParams(
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=max(pick("top_k"), 0),
        min_p=pick("min_p"),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=pick("repetition_penalty"),
        seed=body.seed,
        max_tokens=_max_tokens(body, settings),
        stop=stops,
        stop_after=(TOOL_CLOSE,) if policy.one_call else (),
        stop_token_ids=tuple(body.stop_token_ids or ()),
        logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()},
    )


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    if body.n not in (None, 1):
        _unsupported("n", f"n={body.n}: this server returns one choice per request; send {body.n} "
                     "requests (with different seeds) instead")
    if body.logprobs or body.top_logprobs:
        _unsupported("logprobs", "logprobs are not supported by this server")
    if body.response_format is not None and body.response_format.type != "text":
        _unsupported("response_format", f"response_format {body.response_format.type!r} is not "
                     "supported; ask for JSON in the prompt or use a tool with a JSON schema")
    if body.functions is not None or body.function_call is not None:
        _unsupported("functions", "the legacy `functions` / `function_call` fields are not supported; "
                     "use `tools` / `tool_choice`")
    for name in ("audio", "prediction", "web_search_options"):
        if getattr(body, name) is not None:
            _unsupported(name, f"{name} is not supported by this server")
    if body.modalities is not None and set(body.modalities) - {"text"}:
        _unsupported("modalities", f"modalities {body.modalities} are not supported; this model outputs text")


def _unsupported(param: str, message: str) -> None:
    raise ApiError(400, message, param=param, code="unsupported_parameter")


def _check_model(requested: str | None, model_id: str, served_names: tuple[str, ...]) -> str:
    if requested is None or requested == model_id or requested in served_names:
        return model_id
    raise ApiError(404, f"model {requested!r} is not served here; GET /v1/models lists {model_id!r}",
                   param="model", code="model_not_found")


def _session_tools(session: SessionOptions) -> list[dict[str, Any]] | None:
    return None if session.tools is None else [dict(t) for t in session.tools]


def _tool_policy(body: ChatCompletionRequest, tools: list[dict[str, Any]] | None) -> ToolPolicy:
    names = [t.get("function", {}).get("name") for t in tools or []]
    if len(set(names)) != len(names):
        raise ApiError(400, f"tools define the same function name twice: {names}", param="tools")
    parallel = body.parallel_tool_calls is not False
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise ApiError(400, f"tool_choice names function {choice.function.name!r}, which is not "
                           f"among the tools {names}", param="tool_choice")
        return ToolPolicy("named", choice.function.name, parallel)
    if choice == "required" and not names:
        raise ApiError(400, "tool_choice 'required' needs at least one tool in `tools`", param="tool_choice")
    if choice == "none" or not names:
        return ToolPolicy("none", None, parallel)
    return ToolPolicy(choice or "auto", None, parallel)


def _stops(body: ChatCompletionRequest, policy: ToolPolicy, tools: list[dict[str, Any]] | None) -> tuple[str, ...]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if policy.mode == "none" and tools:
        stops.append(TOOL_OPEN)
    return tuple(stops)


def _max_tokens(body: ChatCompletionRequest, settings: ServerSettings) -> int:
    asked = body.max_completion_tokens or body.max_tokens
    if asked is None:
        return min(settings.default_max_tokens, settings.max_tokens)
    if asked > settings.max_tokens:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{field}={asked} exceeds this server's limit of {settings.max_tokens}; "
                       "ask for fewer or start the server with a larger --max-tokens", param=field)
    return asked
