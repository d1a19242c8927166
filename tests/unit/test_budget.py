"""gateway/budget.py: the bytes of bodies the gateway holds at once. A request reserves before it holds,
grows its reservation as it needs, is refused 503 (with Retry-After) while others hold the rest and 413 when
it could never fit, and gives everything back when it ends, however it ends; one key holds at most its share.
The settings that size it are checked together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from gateway.budget import BodyBudget, BudgetMiddleware, Hold
from gateway.problems import Problem
from gateway.settings import ENVELOPE_BYTES, Settings


def test_a_hold_grows_to_what_it_needs_and_counts_each_byte_once() -> None:
    budget = BodyBudget(100, key_share=100, retry_after_s=3)
    hold = Hold(budget)
    hold.cover(40)
    hold.cover(30)  # already covered
    hold.cover(60)
    assert (hold.held, budget.used) == (60, 60)
    hold.release()
    assert (hold.held, budget.used) == (0, 0)


def test_what_others_hold_now_is_a_503_with_retry_after_and_takes_nothing() -> None:
    budget = BodyBudget(100, key_share=100, retry_after_s=3)
    Hold(budget).cover(70)
    late = Hold(budget)
    with pytest.raises(Problem) as refused:
        late.cover(40)
    assert (refused.value.slug, refused.value.status) == ("server-busy", 503)
    assert refused.value.headers == {"Retry-After": "3"}
    assert (late.held, budget.used) == (0, 70)
    late.cover(30)  # what is left still fits
    assert budget.used == 100


def test_more_than_the_whole_budget_is_a_413_even_when_it_is_free() -> None:
    budget = BodyBudget(100, key_share=100, retry_after_s=3)
    with pytest.raises(Problem) as refused:
        Hold(budget).cover(101)
    assert (refused.value.slug, refused.value.status) == ("payload-too-large", 413)
    assert budget.used == 0


def test_the_budget_must_hold_the_largest_batch_the_limits_allow() -> None:
    settings = Settings(max_upload_bytes=1024, max_batch_files=4, max_buffered_bytes=4 * 1024 + ENVELOPE_BYTES)
    assert BodyBudget.of(settings).capacity == 4 * 1024 + ENVELOPE_BYTES
    with pytest.raises(ValueError, match="GATEWAY_MAX_BUFFERED_BYTES"):
        Settings(max_upload_bytes=1024, max_batch_files=4, max_buffered_bytes=4 * 1024 + ENVELOPE_BYTES - 1)


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ["answered", "failed"])
async def test_the_middleware_releases_a_requests_hold_however_it_ends(ending: str) -> None:
    budget = BodyBudget(100, key_share=100, retry_after_s=1)
    seen: list[Hold] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        hold: Hold = scope["state"]["body_hold"]
        hold.cover(80)
        seen.append(hold)
        assert budget.used == 80
        if ending == "failed":
            raise RuntimeError("the route failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    middleware = BudgetMiddleware(app, budget, rate_bytes_s=1024, grace_s=10)
    scope: Scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
    if ending == "failed":
        with pytest.raises(RuntimeError):
            await middleware(scope, receive, send)
    else:
        await middleware(scope, receive, send)
    assert seen and budget.used == 0


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
