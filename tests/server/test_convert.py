"""Wire request → engine ChatRequest: sampling, messages, tool policy and the refusals."""

import json

import pytest
from pydantic import ValidationError

from qla_agent.runtime.sessions import SessionOptions
from qla_agent.server.convert import SamplingDefaults, plan_chat, resolve_session_id
from qla_agent.server.errors import ApiError, as_api_error
from qla_agent.server.schemas import ChatCompletionRequest
from qla_agent.server.settings import ServerSettings

SETTINGS = ServerSettings(max_tokens=1000, default_max_tokens=64)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def plan(header_session_id=None, session=None, **body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    request = ChatCompletionRequest.model_validate(body)
    return plan_chat(request, settings=SETTINGS, model_id="tiny", served_names=("alias",),
                     session_id=resolve_session_id(request, header_session_id), session=session)


def api_error(**body) -> ApiError:
    with pytest.raises(ApiError) as info:
        plan(**body)
    return info.value


def test_sampling_and_defaults():
    out = plan(temperature=0, top_p=0.5, top_k=-1, min_p=0.1, seed=7, stop="END", max_tokens=5,
               presence_penalty=0.5, repetition_penalty=1.1, stop_token_ids=[3])
    s = out.request.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (0, 0.5, 0, 0.1, 7)
    assert (s.stop, s.stop_token_ids, s.max_tokens) == (("END",), (3,), 5)
    assert (s.presence_penalty, s.repetition_penalty) == (0.5, 1.1)
    assert plan().request.sampling.max_tokens == SETTINGS.default_max_tokens
    assert plan(max_tokens=9, max_completion_tokens=4).request.sampling.max_tokens == 4
    small = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    out = plan_chat(small, settings=ServerSettings(max_tokens=8), model_id="tiny", served_names=())
    assert out.request.sampling.max_tokens == 8


def test_model_sampling_defaults_fill_what_the_request_leaves_out(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [1]}))
    defaults = SamplingDefaults.from_model_dir(tmp_path)
    assert defaults == SamplingDefaults(temperature=0.6, top_p=0.95, top_k=20)
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "top_p": 0.5})
    s = plan_chat(request, settings=SETTINGS, model_id="tiny", served_names=(), defaults=defaults).request.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.6, 0.5, 20, 0.0)
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert SamplingDefaults.from_model_dir(tmp_path) == SamplingDefaults()
    assert SamplingDefaults.from_model_dir(tmp_path / "missing") == SamplingDefaults()


def test_messages_become_template_dicts():
    out = plan(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "refusal": None, "annotations": [],
         "reasoning_content": "hmm",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ], tools=[WEATHER])
    ref = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "", "reasoning_content": "hmm",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    assert out.request.messages == ref
    assert out.request.tools == [WEATHER]


def test_thinking_switches_reach_the_template():
    assert plan(enable_thinking=False).request.template_kwargs == {"enable_thinking": False}
    assert plan(reasoning_effort="none").request.template_kwargs == {"enable_thinking": False}
    kwargs = plan(chat_template_kwargs={"enable_thinking": True, "preserve_thinking": True},
                  reasoning_effort="none").request.template_kwargs
    assert kwargs == {"enable_thinking": True, "preserve_thinking": True}
    assert "may not set ['add_generation_prompt']" in api_error(
        chat_template_kwargs={"add_generation_prompt": False}).message


def test_tool_policy():
    assert plan(tools=[WEATHER]).policy.mode == "auto"
    assert plan().policy.mode == "none"
    named = plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
                 parallel_tool_calls=False).policy
    assert (named.mode, named.name, named.parallel) == ("named", "get_time", False)
    none = plan(tools=[WEATHER], tool_choice="none", stop=["x"])
    assert none.policy.mode == "none"
    assert none.request.sampling.stop == ("x", "<tool_call>")
    assert none.request.tools == [WEATHER]
    assert api_error(tool_choice="required").param == "tool_choice"
    assert "not among the tools" in api_error(
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}).message
    assert "same function name twice" in api_error(tools=[WEATHER, WEATHER]).message


@pytest.mark.parametrize("body, stop_after", [
    ({"tools": [WEATHER]}, ()),
    ({"tools": [WEATHER], "parallel_tool_calls": False}, ("</tool_call>",)),
    ({"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}, ("</tool_call>",)),
    ({"tools": [WEATHER], "tool_choice": "required"}, ()),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     ("</tool_call>",)),
    ({"tools": [WEATHER], "tool_choice": "none", "parallel_tool_calls": False}, ()),
    ({"parallel_tool_calls": False}, ()),
], ids=["auto", "auto-one", "required-one", "required", "named", "none", "no-tools"])
def test_one_call_answers_stop_after_the_first_call(body, stop_after):
    assert plan(**body).request.sampling.stop_after == stop_after


def session_options(tools, kwargs):
    return SessionOptions(id="s1", tools=tools, template_kwargs=kwargs)


def test_a_session_lends_its_tools_and_options():
    info = session_options((WEATHER,), {"enable_thinking": False, "preserve_thinking": True})
    out = plan(session=info, session_id="s1", enable_thinking=True)
    assert (out.policy.mode, out.tools, out.request.tools) == ("auto", [WEATHER], None)
    assert out.template_kwargs == {"enable_thinking": True, "preserve_thinking": True}
    assert out.request.template_kwargs == {"enable_thinking": True}
    replaced = plan(session=info, session_id="s1", tools=[TIME])
    assert (replaced.tools, replaced.request.tools) == ([TIME], [TIME])
    assert plan(session=session_options(None, {}), session_id="s1").policy.mode == "none"
    named = plan(session=info, session_id="s1", tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.policy.name == "get_weather"


def test_session_id_from_body_or_header():
    assert plan(session_id="s1").request.session_id == "s1"
    assert plan(header_session_id="s2").request.session_id == "s2"
    assert plan(header_session_id="s2", session_id="s2").request.session_id == "s2"
    with pytest.raises(ApiError, match="differ"):
        plan(header_session_id="s2", session_id="s1")


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-4o"}, 404, "model"),
    ({"max_tokens": 1001}, 400, "max_tokens"),
    ({"n": 2}, 400, "n"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"functions": [{"name": "f"}]}, 400, "functions"),
    ({"messages": [{"role": "assistant", "content": "",
                    "tool_calls": [{"id": "c", "type": "function",
                                    "function": {"name": "f", "arguments": "{oops"}}]}]},
     400, "messages[0].tool_calls[0].function.arguments"),
])
def test_refusals_name_the_parameter(body, status, param):
    err = api_error(**body)
    assert (err.status, err.param) == (status, param)


def test_session_extensions():
    out = plan(session_id="s1", messages=[], keep_messages=2, memory_policy="bounded")
    assert (out.request.messages, out.request.keep_messages) == ([], 2)
    assert (out.request.policy.kind, out.request.policy.window_tokens) == ("bounded", SETTINGS.window_tokens)
    assert plan().request.policy is None
    assert api_error(messages=[]).param == "messages"
    assert api_error(keep_messages=1).param == "keep_messages"


def test_logit_bias_keys_become_token_ids():
    assert plan(logit_bias={"5": -100, "7": 2.5}).request.sampling.logit_bias == {5: -100.0, 7: 2.5}


def test_model_aliases_are_accepted():
    assert plan(model="alias").model == "tiny"
    assert plan(model="tiny").model == "tiny"


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}], "bogus": 1}, "bogus"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "session_id": "../etc/passwd"}, "session_id"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"a": 1}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 101}}, "logit_bias"),
])
def test_schema_errors_are_422_naming_the_field(body, param):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    err = as_api_error(info.value)
    assert (err.status, err.param) == (422, param)
