"""Settings: env only, clear one-line errors naming the variable."""

from __future__ import annotations

import pytest
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from ragline_common.settings import ServiceSettings, host_port, load_settings

pytestmark = pytest.mark.unit


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore", frozen=True)
    peer_addr: str = Field(description="peer")

    @field_validator("peer_addr")
    @classmethod
    def _peer(cls, v: str) -> str:
        return host_port(v, "DEMO_PEER_ADDR")


def test_missing_required_variable_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEMO_PEER_ADDR", raising=False)
    with pytest.raises(SystemExit) as exc:
        load_settings(DemoSettings)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["configuration error: DEMO_PEER_ADDR: Field required (missing)"]


@pytest.mark.parametrize("bad", ["nohost", "host:", ":80", "host:99999", "host:http"])
def test_malformed_peer_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    monkeypatch.setenv("DEMO_PEER_ADDR", bad)
    with pytest.raises(SystemExit):
        load_settings(DemoSettings)
    err = capsys.readouterr().err
    assert "DEMO_PEER_ADDR" in err and "host:port" in err and repr(bad) in err


def test_bad_port_names_the_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DEMO_PEER_ADDR", "a:1")
    monkeypatch.setenv("DEMO_HTTP_PORT", "eighty")
    with pytest.raises(SystemExit):
        load_settings(DemoSettings)
    assert "DEMO_HTTP_PORT" in capsys.readouterr().err


def test_valid_environment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PEER_ADDR", "embedder:50051")
    monkeypatch.setenv("DEMO_HTTP_PORT", "9000")
    s = load_settings(DemoSettings)
    assert (s.peer_addr, s.http_port) == ("embedder:50051", 9000)
