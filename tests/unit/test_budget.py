"""gateway/budget.py: the bytes of bodies the gateway holds at once. A request reserves before it holds,
grows its reservation as it needs, is refused 503 (with Retry-After) while others hold the rest and 413 when
it could never fit, and gives everything back when it ends, however it ends."""

from __future__ import annotations

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.budget import ENVELOPE_BYTES, BodyBudget, BudgetMiddleware, Hold
from gateway.problems import Problem
from gateway.settings import Settings


def test_a_hold_grows_to_what_it_needs_and_counts_each_byte_once() -> None:
    budget = BodyBudget(100, retry_after_s=3)
    hold = Hold(budget)
    hold.cover(40)
    hold.cover(30)  # already covered
    hold.cover(60)
    assert (hold.held, budget.used) == (60, 60)
    hold.release()
    assert (hold.held, budget.used) == (0, 0)


def test_what_others_hold_now_is_a_503_with_retry_after_and_takes_nothing() -> None:
    budget = BodyBudget(100, retry_after_s=3)
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
    budget = BodyBudget(100, retry_after_s=3)
    with pytest.raises(Problem) as refused:
        Hold(budget).cover(101)
    assert (refused.value.slug, refused.value.status) == ("payload-too-large", 413)
    assert budget.used == 0


def test_the_budget_must_hold_the_largest_batch_the_limits_allow() -> None:
    settings = Settings(max_upload_bytes=1024, max_batch_files=4, max_buffered_bytes=4 * 1024 + ENVELOPE_BYTES)
    assert BodyBudget.of(settings).capacity == 4 * 1024 + ENVELOPE_BYTES
    with pytest.raises(ValueError, match="GATEWAY_MAX_BUFFERED_BYTES"):
        BodyBudget.of(settings.model_copy(update={"max_buffered_bytes": 4 * 1024 + ENVELOPE_BYTES - 1}))


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ["answered", "failed"])
async def test_the_middleware_releases_a_requests_hold_however_it_ends(ending: str) -> None:
    budget = BodyBudget(100, retry_after_s=1)
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

    middleware = BudgetMiddleware(app, budget)
    scope: Scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
    if ending == "failed":
        with pytest.raises(RuntimeError):
            await middleware(scope, receive, send)
    else:
        await middleware(scope, receive, send)
    assert seen and budget.used == 0
