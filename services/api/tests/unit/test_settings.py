"""ApiSettings: required peers, keys from env or file, refusal of missing and placeholder keys."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import SecretStr, ValidationError

from ragline_api.settings import ApiSettings

pytestmark = pytest.mark.unit

PEERS = {"retriever_addr": "r:50052", "generator_addr": "g:50053", "embedder_addr": "e:50051"}
GOOD = "k" * 24


def test_defaults_and_ports() -> None:
    s = ApiSettings(**PEERS, keys=SecretStr(GOOD))
    assert (s.http_port, s.grpc_port, s.enable_auth) == (8080, 50050, True)
    assert s.api_keys() == [GOOD] and s.cors_origin_list() == []


def test_auth_on_without_keys_is_refused() -> None:
    with pytest.raises(ValidationError, match="no key is set"):
        ApiSettings(**PEERS)


@pytest.mark.parametrize("key", ["changeme", "CHANGEME", "secret", "short-key"])
def test_placeholder_or_short_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="placeholder or shorter than 16"):
        ApiSettings(**PEERS, keys=SecretStr(f"{GOOD},{key}"))


def test_keys_file_one_per_line(tmp_path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# rotated 2026-11\n{GOOD}\n\n{'m' * 20}\n")
    s = ApiSettings(**PEERS, keys_file=str(f), keys=SecretStr("z" * 16))
    assert s.api_keys() == ["z" * 16, GOOD, "m" * 20]
    with pytest.raises(ValidationError, match="cannot be read"):
        ApiSettings(**PEERS, keys_file=str(tmp_path / "missing"))


def test_auth_off_needs_no_key_and_keys_are_not_printed() -> None:
    s = ApiSettings(**PEERS, enable_auth=False)
    assert s.api_keys() == []
    assert GOOD not in repr(ApiSettings(**PEERS, keys=SecretStr(GOOD)))


def test_bad_peer_address_is_refused() -> None:
    with pytest.raises(ValidationError, match="host:port"):
        ApiSettings(**{**PEERS, "retriever_addr": "retriever"}, keys=SecretStr(GOOD))
    assert ApiSettings(**{**PEERS, "retriever_addr": "dns:///retriever:50052"}, enable_auth=False)


def test_missing_peer_stops_startup_naming_the_variable() -> None:
    env = {"API_GENERATOR_ADDR": "g:1", "API_EMBEDDER_ADDR": "e:1", "API_KEYS": GOOD, "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "ragline_api"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "API_RETRIEVER_ADDR" in proc.stderr and "Traceback" not in proc.stderr


def test_rate_limit_defaults_to_50_per_key_with_auth_and_none_without() -> None:
    assert ApiSettings(**PEERS, keys=SecretStr(GOOD)).effective_rate_limit() == 50.0
    assert ApiSettings(**PEERS, enable_auth=False).effective_rate_limit() == 0.0
    # Set explicitly, it applies either way (per client address with auth off).
    assert ApiSettings(**PEERS, enable_auth=False, rate_limit_per_second=5).effective_rate_limit() == 5.0
    assert ApiSettings(**PEERS, keys=SecretStr(GOOD), rate_limit_per_second=0).effective_rate_limit() == 0.0


def test_admission_defaults_are_an_adaptive_range() -> None:
    s = ApiSettings(**PEERS, enable_auth=False)
    assert (s.min_concurrency, s.max_concurrency, s.admission_tolerance, s.max_queue) == (16, 64, 2.0, 128)
    with pytest.raises(ValidationError, match="admission_tolerance"):
        ApiSettings(**PEERS, enable_auth=False, admission_tolerance=0.5)
