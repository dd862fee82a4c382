"""The C engine loads when it should, and engine selection never falls back silently."""
from __future__ import annotations

import os
import sys

import pytest

import fastc1k
from fastc1k import EngineError, _compat

from _client import H11Client


@pytest.mark.skipif(os.environ.get("FASTC1K_NO_EXTENSIONS") == "1", reason="built without extensions")
def test_c_engine_loaded():
    """Without FASTC1K_NO_EXTENSIONS the extension must be built, importable and real."""
    assert fastc1k.c_available(), f"C engine not available: {_compat._import_c()[1]}"
    assert fastc1k.load_engine("c").ENGINE_NAME == "c"


@pytest.fixture
def no_extension(monkeypatch):
    """Make `from . import _core` fail as it does in a FASTC1K_NO_EXTENSIONS build."""
    monkeypatch.setitem(sys.modules, "fastc1k._core", None)  # None in sys.modules: ImportError
    monkeypatch.delattr(fastc1k, "_core", raising=False)
    monkeypatch.setattr(_compat, "_warned", False)
    monkeypatch.delenv("FASTC1K_ENGINE", raising=False)


def test_explicit_c_without_extension_is_an_error(no_extension, monkeypatch):
    assert not fastc1k.c_available()
    with pytest.raises(EngineError, match="C engine was requested"):
        fastc1k.load_engine("c")
    monkeypatch.setenv("FASTC1K_ENGINE", "c")
    with pytest.raises(EngineError):
        fastc1k.load_engine()
    with pytest.raises(EngineError):
        fastc1k.Server(fastc1k.ServerConfig(port=0))


def test_fallback_warns_once_on_one_line(no_extension, capsys):
    assert fastc1k.load_engine().ENGINE_NAME == "python"
    assert fastc1k.load_engine().ENGINE_NAME == "python"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("fastc1k: C engine not available") and "pure-Python" in lines[0]


def test_unknown_engine_is_an_error(monkeypatch):
    with pytest.raises(EngineError, match="engine must be one of"):
        fastc1k.load_engine("rust")
    monkeypatch.setenv("FASTC1K_ENGINE", "java")
    with pytest.raises(EngineError):
        fastc1k.load_engine()


def test_explicit_python_serves(monkeypatch, capsys):
    monkeypatch.setenv("FASTC1K_ENGINE", "python")
    assert fastc1k.load_engine().ENGINE_NAME == "python"
    with fastc1k.running_server(engine="python") as srv:
        assert srv.engine_name == "python"
        with H11Client(srv.address) as c:
            resp = c.request("GET", "/api/health")
    assert resp.status == 200 and resp.body == b'{"status":"ok"}'
    assert "not available" not in capsys.readouterr().err  # an explicit choice does not warn
