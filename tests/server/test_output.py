"""The forced start of an answer (tool_choice "required" / named) read back by the real parsers."""

import json

import pytest

from qla_agent.server.convert import ToolPolicy
from qla_agent.server.output import call_prefix
from qla_agent.tools.parsers import parser_for

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# What a model writes after the forced start, per format, for get_weather(city="Paris").
REST = {
    "qwen_xml": {"named": "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
                 "required": "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
                             "</tool_call>"},
    "hermes": {"named": '{"city": "Paris"}}\n</tool_call>',
               "required": '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'},
}


@pytest.mark.parametrize("tool_format", ["qwen_xml", "hermes"])
@pytest.mark.parametrize("mode", ["named", "required"])
def test_prefix_and_the_models_rest_parse_as_one_call(tool_format, mode):
    policy = ToolPolicy(mode, "get_weather" if mode == "named" else None)
    prefix = call_prefix(policy, tool_format)
    assert prefix.startswith("<tool_call>\n")
    out = parser_for(tool_format, [WEATHER]).parse(prefix + REST[tool_format][mode])
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert not out.content and all(c.error is None for c in out.tool_calls)


def test_hermes_name_is_json_escaped_and_nothing_is_forced_otherwise():
    assert call_prefix(ToolPolicy("named", 'say "hi"'), "hermes").endswith('{"name": "say \\"hi\\"", "arguments": ')
    for policy, fmt in ((ToolPolicy("auto"), "qwen_xml"), (ToolPolicy("none"), "hermes"),
                        (ToolPolicy("required"), None)):
        assert call_prefix(policy, fmt) == ""
