"""The body budget's arithmetic (gateway/budget.py) and the settings that size it, checked together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.budget import BodyBudget, Hold
from gateway.problems import Problem
from gateway.settings import ENVELOPE_BYTES, Settings


def test_the_default_share_is_one_full_batch_and_the_budget_holds_one_and_a_half() -> None:
    settings = Settings()
    assert settings.key_share_bytes == settings.max_upload_bytes * settings.max_batch_files + ENVELOPE_BYTES
    others = settings.max_buffered_bytes - settings.key_share_bytes  # what one key can never take from the rest
    assert others // settings.max_upload_bytes == 15


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_key_buffered_bytes": 1024}, "GATEWAY_MAX_KEY_BUFFERED_BYTES"),  # below one full batch
        ({"max_buffered_bytes": 1024}, "GATEWAY_MAX_BUFFERED_BYTES"),  # below one key's share
        ({"max_batch_files": 64}, "GATEWAY_MAX_BUFFERED_BYTES"),  # the batch grew past the budget
    ],
)
def test_settings_that_would_refuse_a_full_batch_for_good_do_not_start(settings: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**settings)


def test_one_key_holds_at_most_its_share_and_gives_it_back() -> None:
    budget = BodyBudget(capacity=400, key_share=200, retry_after_s=1)
    first, second, other = Hold(budget), Hold(budget), Hold(budget)
    for hold, key in ((first, "a"), (second, "a"), (other, "b")):
        hold.belongs_to(key)
    first.cover(150)
    with pytest.raises(Problem) as busy:
        second.cover(100)  # a's share is 200
    assert busy.value.slug == "server-busy" and "share" in busy.value.detail
    other.cover(150)  # b is served meanwhile
    with pytest.raises(Problem) as never:
        second.cover(250)  # above any key's share: it could never fit
    assert never.value.slug == "payload-too-large"
    first.release()
    second.cover(200)
    assert (budget.used, budget.used_by) == (350, {"a": 200, "b": 150})


def test_a_request_that_reserved_nothing_releases_nothing() -> None:
    """Most requests of a key reserve nothing (a GET, a refusal from the head): their release changes nothing."""
    budget = BodyBudget(capacity=300, key_share=100, retry_after_s=1)
    empty = Hold(budget)
    empty.belongs_to("a")
    empty.release()
    assert (budget.used, budget.used_by) == (0, {})


def test_a_reservation_made_before_the_key_was_known_moves_to_its_share() -> None:
    budget = BodyBudget(capacity=300, key_share=100, retry_after_s=1)
    hold = Hold(budget)
    hold.cover(80)
    hold.belongs_to("a")
    assert (budget.used, budget.used_by) == (80, {"a": 80})
    hold.release()
    assert (budget.used, budget.used_by) == (0, {})
