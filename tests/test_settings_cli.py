"""Configuration errors name the setting; `pivot --help` lists every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert (s.host, s.http_port, s.mllp_port, str(s.data_dir)) == ("127.0.0.1", 8080, 2575, "var")
    assert (s.kafka_bootstrap, s.kafka_topic_prefix, s.fhir_base_url) == ("", "pivot.", "")
    assert s.embedded
    assert s.topic("hl7v2.in") == "pivot.hl7v2.in"


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIVOT_MLLP_PORT", "seventy")
    with pytest.raises(ConfigError, match="PIVOT_MLLP_PORT"):
        load_settings()
    monkeypatch.delenv("PIVOT_MLLP_PORT")
    monkeypatch.setenv("PIVOT_DEFAULT_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="PIVOT_DEFAULT_TIMEZONE"):
        load_settings()


def test_every_setting_is_in_env_example() -> None:
    from gateway.settings import Settings

    text = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"PIVOT_{name.upper()}=" in text, name


def _pivot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, check=False)


def test_help_lists_every_command() -> None:
    out = _pivot("--help")
    assert out.returncode == 0
    for command in ("serve", "ingest", "deadletter", "config"):
        assert command in out.stdout


def test_serve_refuses_a_bad_setting_with_its_name(tmp_path: Path) -> None:
    out = _pivot("serve", env={"PIVOT_HTTP_PORT": "99999", "PIVOT_DATA_DIR": str(tmp_path)})
    assert out.returncode == 2
    assert "PIVOT_HTTP_PORT" in out.stderr
