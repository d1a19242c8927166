"""The demo page in a real headless Chromium (Debian's package, driven by Playwright; no browser download)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imagegen import jpeg
from support import Gateway
from testmodel import photo, picture

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL_HINT = "Chromium is missing: install Debian's package (`sudo apt-get install chromium`) or set CHROMIUM_PATH"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT + " (.ci/run installs it)")
        pytest.skip(INSTALL_HINT)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser, gateway: Gateway):
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(gateway.url + "/")
    yield page, problems
    context.close()


def test_page_is_self_contained_with_a_strict_csp(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
    assert "http" not in response.text.replace('lang="en"', "")  # no CDN, no external fonts
    for asset in ("static/demo.js", "static/demo.css"):
        assert httpx.get(f"{gateway.url}/{asset}", timeout=10).status_code == 200


def test_classify_an_image(page, api_key: str, tmp_path: Path) -> None:
    page, problems = page
    image = tmp_path / "photo.jpg"
    image.write_bytes(photo("coffee"))
    page.fill("#key", api_key)
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#results li:nth-child(5)", timeout=60_000)
    labels = page.locator("#results .label").all_inner_texts()
    widths = page.locator("#results .fill").evaluate_all("els => els.map(e => parseFloat(e.style.width))")
    assert len(labels) == 5 and all(labels) and labels[0] == "espresso"
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    assert page.locator("#preview").get_attribute("src").startswith("blob:")
    # the session serves the test model, built from a weights file: not flagged untrained, so no warning
    assert page.locator("#untrained").is_hidden()
    assert page.evaluate("sessionStorage.getItem('apiKey')") == api_key
    assert page.evaluate("localStorage.length") == 0
    assert problems == []


def test_wrong_key_shows_the_problem_detail(page, tmp_path: Path) -> None:
    page, problems = page
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg(seed=6))
    page.fill("#key", "ica_not-a-key")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "valid API key" in page.inner_text("#error")
    assert page.locator("#results li").count() == 0
    assert [p for p in problems if "401" not in p] == []  # the browser logs the failed fetch itself


PAINTED_BOX = """() => {
  const canvas = document.getElementById("overlay");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let box = [canvas.width, canvas.height, -1, -1];
  for (let i = 3; i < data.length; i += 4) {
    if (data[i] === 0) continue;
    const x = ((i - 3) / 4) % canvas.width, y = Math.floor((i - 3) / 4 / canvas.width);
    box = [Math.min(box[0], x), Math.min(box[1], y), Math.max(box[2], x), Math.max(box[3], y)];
  }
  return box;
}"""


def test_the_overlay_shows_where_the_model_looked(page, gateway: Gateway, api_key: str, tmp_path: Path) -> None:
    page, problems = page
    data = photo("chelsea")
    image = tmp_path / "photo.jpg"
    image.write_bytes(data)
    page.fill("#key", api_key)
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#overlay:not([hidden])", timeout=60_000)
    first = page.locator("#results li").nth(0)
    assert page.get_attribute("#overlay", "data-class-id") == first.get_attribute("data-class-id")
    assert "chosen" in first.get_attribute("class")
    assert page.evaluate("[overlay.width, overlay.height]") == list(picture("chelsea").size)
    assert "tabby" in page.inner_text("#explaining")
    shown, over = page.locator("#preview").bounding_box(), page.locator("#overlay").bounding_box()
    assert all(abs(shown[k] - over[k]) < 1 for k in ("x", "y", "width", "height"))  # laid exactly over the preview
    explained = httpx.post(
        f"{gateway.url}/v1/explain",
        content=data,
        timeout=60,
        headers={"X-API-Key": api_key, "Content-Type": "image/jpeg"},
    ).json()
    crop = explained["crop"]
    left, top, right, bottom = page.evaluate(PAINTED_BOX)
    assert (left, top) == (int(crop["left"]), int(crop["top"]))  # the map covers the model's crop, no more
    assert abs(right + 1 - crop["right"]) <= 1 and abs(bottom + 1 - crop["bottom"]) <= 1
    before = page.evaluate("overlay.toDataURL()")
    second = page.locator("#results li").nth(1)
    second.click()
    assert page.get_attribute("#overlay", "data-class-id") == second.get_attribute("data-class-id")
    assert "chosen" in second.get_attribute("class") and "chosen" not in (first.get_attribute("class") or "")
    assert second.locator(".label").inner_text() in page.inner_text("#explaining")
    assert page.evaluate("overlay.toDataURL()") != before
    assert problems == []


def test_docs_are_self_hosted_under_a_strict_csp(gateway: Gateway) -> None:
    """/docs: Swagger UI from the gateway's own files (no CDN), every one under a CSP; /redoc is gone."""
    page = httpx.get(gateway.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text and "//" not in page.text  # no absolute or scheme-relative URL
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["docs/docs.js", "docs/swagger-ui-bundle.js", "docs/swagger-ui.css"]
    for response in [page, *(httpx.get(f"{gateway.url}/{asset}", timeout=10) for asset in assets)]:
        assert response.status_code == 200, response.url
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp and "style-src 'self';" in csp
        assert "unsafe" not in csp
    assert httpx.get(gateway.url + "/redoc", timeout=10).status_code == 404


def test_docs_work_offline_in_a_browser(browser, gateway: Gateway) -> None:
    """Swagger UI renders the live schema with every request to anywhere but the gateway refused (a host
    without internet) and no Content-Security-Policy violation (Chromium logs each as a console error)."""
    context = browser.new_context()
    page = context.new_page()
    requests: list[str] = []
    problems: list[str] = []
    context.route(lambda url: not url.startswith(gateway.url + "/"), lambda route: route.abort())
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        page.goto(gateway.url + "/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/v1/predict']", timeout=30_000)
        paths = page.locator(".opblock-summary-path").evaluate_all("els => els.map(e => e.dataset.path)")
        assert {"/v1/predict", "/v1/predict/batch", "/v2/models/{model_name}/infer"} <= set(paths)
    finally:
        context.close()
    assert problems == []
    assert requests and all(url.startswith(gateway.url + "/") for url in requests), requests
