"""The playground in a real browser: Debian's chromium, driven by selenium, against a real server.

Each panel is used as a person would (type, click or press keys, wait for what appears) and the
test checks what is drawn against what the API answers for the same input. Screenshots of each
panel go to $RNNSERVE_PLAYGROUND_SCREENSHOTS (default: a temporary folder). The tiny random
models serve by default; RNNSERVE_PLAYGROUND_MODELS=shipped serves models/pretrained instead, which
is how reports/playground/ was made:

    RNNSERVE_PLAYGROUND_MODELS=shipped RNNSERVE_PLAYGROUND_SCREENSHOTS=reports/playground \\
        .venv/bin/pytest tests/service/test_playground.py

Skipped, saying why, where chromium or chromium-driver is not installed (`.ci/run` installs them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import running_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 60  # the longest a rendered answer may take: a condition is waited for, never a time
LONG_TEXT = "good " * 201  # 1005 characters: over the 1,000 a /sentiment text may have


@pytest.fixture(scope="module")
def server(tiny_shipped_dir, tmp_path_factory) -> Iterator[str]:
    shipped = os.environ.get("RNNSERVE_PLAYGROUND_MODELS") == "shipped"
    with running_server(None if shipped else tiny_shipped_dir, tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("RNNSERVE_PLAYGROUND_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(server):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="rnnserve-chromium-")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,800"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser, server):
    """The playground, loaded afresh at 1280x800 with every example rendered."""
    browser.set_window_size(1280, 800)
    browser.get(f"{server}/playground/")
    wait_for(browser, lambda: browser.find_element("tag name", "body").get_attribute("data-ready") == "yes")
    return browser


def wait_for(browser, condition, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S).until(lambda _: condition(), message)


def count(browser, selector: str) -> int:
    return len(browser.find_elements("css selector", selector))


def element(browser, selector: str):
    return browser.find_element("css selector", selector)


def replace_text(browser, selector: str, text: str) -> None:
    """Select what the field holds and type `text` over it, as a person would."""
    from selenium.webdriver.common.keys import Keys

    field = element(browser, selector)
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(text)


def set_value(browser, selector: str, value: str) -> None:
    """For text too long to type key by key: set it and tell the page, as a paste would."""
    browser.execute_script("const e = document.querySelector(arguments[0]); e.value = arguments[1]; "
                           "e.dispatchEvent(new Event('input', {bubbles: true}));", selector, value)


def panel_screenshot(browser, panel: str, path: Path) -> None:
    """A screenshot of the whole panel: chromium's stops at the window, so the window grows first."""
    height = browser.execute_script(f"return document.querySelector('{panel}').getBoundingClientRect().bottom"
                                    " + window.scrollY")
    browser.set_window_size(1280, max(800, int(height) + 200))
    element(browser, panel).screenshot(str(path))
    browser.set_window_size(1280, 800)


def severe_console_messages(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


# -- the first look -----------------------------------------------------------------------------------


def test_the_page_loads_with_every_example_rendered_and_breaks_no_policy(page, client, screenshots):
    text = element(page, "#sentiment-text").get_attribute("value")
    [explained] = client.post("/sentiment", json={"texts": [text], "explain": True}).json()
    assert count(page, "#sentiment-chart circle.point") == len(explained["tokens"]) > 5
    assert element(page, "#sentiment-label").text.startswith(explained["label"])
    assert count(page, "#generation-output span.char") == 300
    assert count(page, "#translation-chart rect.cell") > 0
    assert count(page, "#models-table tbody tr") == 4
    # the Content-Security-Policy refused nothing (a refusal is logged as an error), nothing failed
    assert severe_console_messages(page) == []
    page.save_screenshot(str(screenshots / "page-1280x800.png"))


def test_every_input_has_a_label_and_the_page_fits_a_narrow_window(page, screenshots):
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, textarea, select')]"
        ".filter(e => !document.querySelector(`label[for='${e.id}']`)).map(e => e.id || e.outerHTML)")
    assert unlabelled == []
    fits = "return document.documentElement.scrollWidth <= window.innerWidth"
    for width, height in ((1280, 800), (400, 800)):
        page.set_window_size(width, height)
        wait_for(page, lambda: page.execute_script(fits), f"the page overflows {width} px")
    page.save_screenshot(str(screenshots / "page-narrow.png"))


# -- each panel, used as a person would -------------------------------------------------------------


def test_sentiment_draws_a_point_per_word_and_shades_each_word(page, client, screenshots):
    from selenium.webdriver.common.keys import Keys

    text = "A dull start, but the actors are wonderful"
    replace_text(page, "#sentiment-text", text)
    element(page, "#sentiment-text").send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard sends it
    [explained] = client.post("/sentiment", json={"texts": [text], "explain": True}).json()
    wait_for(page, lambda: count(page, "#sentiment-chart circle.point") == len(explained["tokens"]) == 9)
    words = page.find_elements("css selector", "#sentiment-words .word")
    assert [word.text for word in words] == explained["tokens"]
    assert [e.text for e in page.find_elements("css selector", "#sentiment-chart .tick-label")] == [
        token[:13] + "\u2026" if len(token) > 14 else token for token in explained["tokens"]]
    last = page.find_elements("css selector", "#sentiment-chart circle.point")[-1]
    title = last.find_element("tag name", "title").get_attribute("textContent")
    assert f"{explained['probabilities']['positive']:.3f}" in title
    panel_screenshot(page, "#sentiment", screenshots / "sentiment.png")


def test_generation_text_streams_in_and_grows_then_equals_generate(page, client, screenshots):
    # record the number of characters shown each time the page adds some
    page.execute_script("""
        window.seen = [];
        new MutationObserver(() => window.seen.push(
            document.querySelectorAll('#generation-output span.char').length))
          .observe(document.getElementById('generation-output'), {childList: true});""")
    replace_text(page, "#generation-prompt", "To be")
    replace_text(page, "#generation-temperature", "1")
    replace_text(page, "#generation-top-k", "0")
    replace_text(page, "#generation-seed", "7")
    replace_text(page, "#generation-max-tokens", "2000")
    element(page, "#generation-start").click()
    wait_for(page, lambda: element(page, "#generation-status").text == "2000 characters generated")
    seen = [n for n in page.execute_script("return window.seen") if n]
    assert len(set(seen)) > 1 and seen == sorted(seen) and seen[-1] == 2000  # it grew, chunk by chunk
    shown = page.execute_script("return [...document.querySelectorAll('#generation-output span.char')]"
                                ".map(s => s.textContent).join('')")
    answer = client.post("/generate", json={"prompt": "To be", "temperature": 1.0, "top_k": 0, "seed": 7,
                                         "max_tokens": 2000}).json()
    assert shown == answer["text"]
    assert "p = " in element(page, "#generation-output span.char").get_attribute("title")
    element(page, "#generation-score").click()
    wait_for(page, lambda: count(page, "#generation-surprisal span.char") == len("To be"))
    assert "nats per character" in element(page, "#generation-surprisal-caption").text
    page.execute_script("document.getElementById('generation-output').scrollTop = 0")
    panel_screenshot(page, "#generation", screenshots / "generation.png")


@pytest.mark.parametrize(("source", "text"), [("de", "Zwei Hunde spielen im Schnee."),
                                              ("ko", "두 마리의 개가 눈 속에서 놀고 있다.")])
def test_translation_draws_a_cell_per_source_and_target_piece(page, client, screenshots, source, text):
    from selenium.webdriver.support.ui import Select

    Select(element(page, "#translation-source")).select_by_value(source)
    replace_text(page, "#translation-text", text)
    element(page, "#translation-form button[type=submit]").click()
    [answer] = client.post("/translate", json={"texts": [text], "source": source,
                                            "return_attention": True}).json()
    cells = len(answer["source_tokens"]) * len(answer["target_tokens"])
    shown = answer["translation"] or "(empty translation)"
    wait_for(page, lambda: count(page, "#translation-chart rect.cell") == cells
             and element(page, "#translation-output").text == shown)
    assert count(page, "#translation-chart .row-label") == len(answer["target_tokens"])
    assert count(page, "#translation-chart .column-label") == len(answer["source_tokens"])
    panel_screenshot(page, "#translation", screenshots / f"translation-{source}.png")


def test_models_panel_lists_what_models_says(page, client, screenshots):
    models = client.get("/models").json()
    rows = [[cell.text for cell in row.find_elements("tag name", "td")]
            for row in page.find_elements("css selector", "#models-table tbody tr")]
    assert [row[0] for row in rows] == [model["tag"] for model in models]
    assert [row[1] for row in rows] == [model["task"] for model in models]
    assert "/sentiment (explain)" in rows[0][5] and "/score" in rows[1][5]
    panel_screenshot(page, "#models", screenshots / "models.png")


def test_errors_from_the_api_are_shown_where_the_request_was_made(page):
    set_value(page, "#sentiment-text", LONG_TEXT)
    element(page, "#sentiment-form button[type=submit]").click()
    wait_for(page, lambda: element(page, "#sentiment-error").is_displayed())
    assert element(page, "#sentiment-error").text.startswith("texts.0: ")
    assert "1000 characters" in element(page, "#sentiment-error").text
    replace_text(page, "#generation-temperature", "5")
    element(page, "#generation-start").click()
    wait_for(page, lambda: element(page, "#generation-error").is_displayed())
    assert element(page, "#generation-error").text == "temperature: Input should be less than or equal to 2"
    # the next good request clears the error
    replace_text(page, "#generation-temperature", "0.5")
    element(page, "#generation-start").click()
    wait_for(page, lambda: not element(page, "#generation-error").is_displayed())


def test_the_stream_reader_parses_server_sent_events_split_anywhere(page):
    """The SSE framing /generate_stream sends (`data:` lines, `event: end`, `event: error` with
    JSON), cut into arbitrary network chunks, read by the page's own reader."""
    events = page.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('./playground.js').then(async ({ serverSentEvents, chunkOf }) => {
          const wire = 'data: {"text":"a\\\\nb","logprobs":[]}\\n\\n: a comment\\ndata: line one\\n' +
                       'data: line two\\r\\n\\r\\nevent: error\\ndata: {"error":"shed"}\\n\\n' +
                       'event: end\\ndata:\\n\\n';
          const pieces = [wire.slice(0, 7), wire.slice(7, 30), wire.slice(30, 61), wire.slice(61)];
          const body = new ReadableStream({ start(controller) {
            for (const piece of pieces) controller.enqueue(new TextEncoder().encode(piece));
            controller.close(); } });
          const seen = [];
          for await (const event of serverSentEvents(new Response(body))) {
            seen.push([event.event, event.data, chunkOf(event.data).text]);
          }
          done(seen);
        });""")
    assert events == [["message", '{"text":"a\\nb","logprobs":[]}', "a\nb"],
                      ["message", "line one\nline two", "line one\nline two"],
                      ["error", '{"error":"shed"}', '{"error":"shed"}'],
                      ["end", "", ""]]
