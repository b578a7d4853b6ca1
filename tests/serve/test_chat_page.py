"""The chat page in a real headless browser (Debian's chromium and chromium-driver, driven by selenium): a message
typed in gets a reply streamed in piece by piece, and a second turn is sent with the whole conversation."""

import re
import shutil
import time

import pytest

import llmlab
from llmlab.infer.chat import read_chat_template
from tests.serve.fake_engine import FakeAsyncEngine
from tests.serve.servers import API_KEY, app_server, cli_server, tiny_checkpoint

webdriver = pytest.importorskip("selenium.webdriver")
from llmlab.infer.serve import ServeSettings, create_app  # noqa: E402

BROWSER, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                reason="the chat page test needs chromium and chromedriver "
                                       "(apt-get install chromium chromium-driver)")
WAIT_SECONDS = 60


@pytest.fixture(scope="module", params=["test double", "llmlab serve"])
def served(request, tmp_path_factory):
    """(base URL, the test double or None, the tokenizer): the double's steps are slow enough to watch a reply grow,
    and `llmlab serve` runs the real engine."""
    directory = tiny_checkpoint(tmp_path_factory.mktemp("page") / "model")
    model = llmlab.load(directory)
    if request.param == "llmlab serve":
        with cli_server(directory, "--served-model-name", "tiny", "--api-key", API_KEY) as (base, _):
            yield base, None, model.tokenizer
        return
    engine = FakeAsyncEngine(model, model.tokenizer, step_seconds=0.1)
    settings = ServeSettings("tiny", model.config.max_seq_len, read_chat_template(directory), API_KEY)
    with app_server(create_app(engine, settings)) as base:
        yield base, engine, model.tokenizer


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, what: str):
    """Poll condition until it is true; fail naming what did not happen."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"the chat page did not {what} within {WAIT_SECONDS} s")


def replies(browser, state: str = ""):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, f".message.assistant{state}")


def type_into(browser, element_id: str, text: str, enter: bool = False):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    element = browser.find_element(By.ID, element_id)
    element.clear()
    element.send_keys(text + (Keys.ENTER if enter else ""))


def test_a_reply_streams_in_and_a_second_turn_keeps_the_conversation(served, browser):
    from selenium.webdriver.common.by import By

    base, engine, tokenizer = served
    browser.get(f"{base}/")
    browser.execute_script("localStorage.clear()")
    type_into(browser, "api-key", API_KEY)
    type_into(browser, "temperature", "0")
    type_into(browser, "max-tokens", "12")
    type_into(browser, "message", "hello there", enter=True)
    if engine is not None:  # part of the reply is on the page while it is still streaming
        wait_for(lambda: [r for r in replies(browser, ".streaming") if r.text.strip()], "show part of a reply")
    first = wait_for(lambda: replies(browser, ".done"), "finish the reply")[0].text
    assert first.strip()
    stats = browser.find_element(By.ID, "stats").text
    assert re.match(r"\d+ tokens, [\d.]+ tokens/s, first token after [\d.]+ s, finished: (stop|length)", stats), stats

    type_into(browser, "message", "and now?", enter=True)
    wait_for(lambda: len(replies(browser, ".done")) == 2, "finish the second reply")
    users = [element.text for element in browser.find_elements(By.CSS_SELECTOR, ".message.user")]
    assert users == ["hello there", "and now?"]
    if engine is not None:  # the second turn's prompt holds the whole conversation
        conversation = tokenizer.decode(engine.prompts[-1], skip_special_tokens=False)
        assert conversation.index("hello there") < conversation.index(first.strip()) < conversation.index("and now?")
    assert not browser.find_elements(By.CSS_SELECTOR, ".message.error")
