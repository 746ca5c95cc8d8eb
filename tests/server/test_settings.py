"""ServerSettings: QLA_* environment parsing, overrides and refusals."""

from pathlib import Path

import pytest

from qla_agent.server.settings import ServerSettings, SettingsError


def test_defaults_are_secure():
    out = ServerSettings.from_env({"XDG_DATA_HOME": "/data"})
    assert out.host == "127.0.0.1"
    assert out.port == 8000
    assert out.api_key is None
    assert out.cors_origins == ()
    assert out.sessions_dir == Path("/data/qla-agent/sessions")
    assert out.threads is None


def test_env_values_are_parsed_and_flags_win():
    env = {"QLA_PORT": "9001", "QLA_API_KEY": "k", "QLA_CORS_ORIGINS": "http://a, http://b",
           "QLA_SESSIONS_DIR": "/tmp/s", "QLA_MAX_TOKENS": "100", "QLA_DEFAULT_MAX_TOKENS": "50",
           "QLA_MEMORY_POLICY": "bounded", "QLA_MODEL": "/m", "QLA_THREADS": "3"}
    out = ServerSettings.from_env(env, port=9002, model=None)
    assert out.port == 9002
    assert out.model == "/m"
    assert out.api_key == "k"
    assert out.cors_origins == ("http://a", "http://b")
    assert out.sessions_dir == Path("/tmp/s")
    assert (out.max_tokens, out.default_max_tokens) == (100, 50)
    assert out.memory_policy == "bounded"
    assert out.threads == 3


@pytest.mark.parametrize("env, fragment", [
    ({"QLA_PORT": "eighty"}, "QLA_PORT='eighty' is not an integer"),
    ({"QLA_PORT": "70000"}, "port 70000"),
    ({"QLA_MAX_BODY_BYTES": "0"}, "max_body_bytes 0"),
    ({"QLA_MEMORY_POLICY": "lossy"}, "memory_policy 'lossy'"),
    ({"QLA_THREADS": "0"}, "threads 0 must be a positive integer"),
    ({"QLA_API_KEY": "  "}, "api_key is empty"),
    ({"QLA_CORS_ORIGINS": "*"}, "cors_origins '*' without an api_key"),
])
def test_bad_values_are_refused_by_name(env, fragment):
    with pytest.raises(SettingsError, match=fragment.replace("*", r"\*").replace("(", r"\(")):
        ServerSettings.from_env(env)


def test_unknown_override_is_refused():
    with pytest.raises(SettingsError, match="unknown server settings"):
        ServerSettings.from_env({}, prot=1)
