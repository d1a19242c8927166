"""TorchServe's key policy (contract/torchserve_tokens.py), the decisions alone; the gateway and the readiness
probe act on them against a real TorchServe in tests/integration/test_gateway_faults.py."""

from __future__ import annotations

import json
from pathlib import Path

from contract.torchserve_tokens import Recovery, Renewal, is_invalid_token, read_tokens, recovery

MANAGEMENT = "http://127.0.0.1:8081"
KEYS = {"inference": "i-1", "management": "m-1", "API": "api"}


def key_file(path: Path, keys: dict[str, str]) -> Path:
    path.write_text(json.dumps({name: {"key": key} for name, key in keys.items()}))
    return path


def test_the_key_file_is_read_as_torchserve_writes_it(tmp_path: Path) -> None:
    assert read_tokens(key_file(tmp_path / "key_file.json", KEYS)) == KEYS


def test_a_missing_or_half_written_key_file_holds_no_key(tmp_path: Path) -> None:
    assert read_tokens(tmp_path / "missing.json") == {}
    for text in ('{"inference": {"key": "i-1"', "[]", '{"inference": "i-1"}', '{"inference": {}}'):
        (tmp_path / "key_file.json").write_text(text)
        assert read_tokens(tmp_path / "key_file.json") == {}, text


def test_only_torchservers_invalid_key_answer_means_a_refused_key() -> None:
    body = b'{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}'
    assert is_invalid_token(400, body)
    assert not is_invalid_token(400, b'{"code": 400, "type": "BadRequestException"}')
    assert not is_invalid_token(503, body)


def test_a_newer_key_in_the_file_is_used_without_a_renewal() -> None:
    assert recovery("inference", "i-0", KEYS, MANAGEMENT) == Recovery(key="i-1")


def test_the_refused_key_still_in_the_file_is_renewed_with_the_api_key() -> None:
    renewal = Renewal(f"{MANAGEMENT}/token", {"type": "management"}, {"Authorization": "Bearer api"})
    assert recovery("management", "m-1", KEYS, MANAGEMENT) == Recovery(renewal=renewal)
    assert recovery("inference", None, {"API": "api"}, MANAGEMENT).renewal is not None  # no key of that kind yet


def test_without_the_api_key_there_is_nothing_to_do() -> None:
    assert recovery("inference", "i-1", {"inference": "i-1"}, MANAGEMENT) == Recovery()
    assert recovery("inference", None, {}, MANAGEMENT) == Recovery()
