"""The chat page at ``/``: served self-contained, and a streamed two-turn conversation in headless Chromium."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from attnlab.data.chat import ChatTemplate
from attnlab.serve.app import create_app
from attnlab.serve.engine import Engine
from attnlab.serve.pages import page_router
from attnlab.serve.runner import ServeConfig, start_in_thread
from attnlab.serve.security import SecurityConfig
from attnlab.viz import Explorer
from tests._browser import chromium_driver, script_errors
from tests.generate._chat import chat_model, chat_tokenizer

KEY = "sk-test-chat-page"
SCREENSHOT = "serve-chat-page.png"
# Every assignment of an assistant reply's text, recorded from the DOM as it happens (a text node per update).
RECORD_UPDATES = """
window.updates = [];
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target.classList && r.target.classList.contains("text") && r.target.closest(".msg.assistant"))
      for (const n of r.addedNodes) window.updates.push(n.data);
  }
}).observe(document.getElementById("messages"), { childList: true, subtree: true });
"""
# The JSON bodies the page posts to the chat API from now on.
RECORD_REQUESTS = """
window.sent = [];
const original = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith("chat/completions")) window.sent.push(JSON.parse(init.body));
  return original(url, init);
};
"""


def page_app() -> FastAPI:
    app = FastAPI()
    app.include_router(page_router(chat=True))
    return app


def test_page_is_served_self_contained():
    with TestClient(page_app()) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache" and c.head("/").status_code == 200
    page = r.text
    # nothing from outside: no absolute or protocol-relative URL in src/href/url()/@import/fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(|@import|fetch\(\s*["'](https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    # the API it streams from, relative to the page (works behind a path prefix), and the explorer link
    assert 'fetch("v1/chat/completions"' in page and 'fetch("v1/models"' in page and 'href="explorer"' in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page


def test_chat_page_with_an_explorer_too(trained_run):
    from attnlab.cli._common import load_for_inference
    from attnlab.viz import Explorer

    model, tok, _, _ = load_for_inference(str(trained_run), "cpu")
    app = FastAPI()
    app.include_router(page_router(chat=True, explorer=Explorer(model, tok)))
    with TestClient(app) as c:
        assert 'id="messages"' in c.get("/").text  # / is the chat page, not a redirect
        assert 'id="heatmap"' in c.get("/explorer").text and c.get("/explorer/api/info").status_code == 200


@pytest.fixture(scope="module")
def chat_server():
    """The tiny chat model on the full app (API key on, the explorer at /explorer, as `attnlab serve` runs it),
    uvicorn on a free port; each decode step takes >= 30 ms so that the reply reaches the browser in pieces."""
    torch.set_num_threads(1)
    model = chat_model()
    hook = model.register_forward_hook(lambda module, args, out: time.sleep(0.03))
    engine = Engine(model, chat_tokenizer(), torch.device("cpu"), "tiny-chat", max_tokens_cap=64,
                    template=ChatTemplate.default())
    explorer = Explorer(chat_model(), chat_tokenizer(), name="tiny-chat")
    app = create_app(engine, explorer=explorer, security=SecurityConfig(api_key=KEY))
    running = start_in_thread(app, ServeConfig(port=0, access_log=False))
    yield running, engine
    running.stop()
    engine.close(5)
    hook.remove()


def say(driver, text: str, timeout: float = 60):
    """Type ``text``, press Enter, wait for the reply to finish; returns the reply element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) > before)
    reply = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    wait.until(lambda d: reply.get_attribute("data-state") != "streaming"
               and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
    return reply


@pytest.mark.slow
def test_two_turn_conversation_streams_in_chromium(chat_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    running, engine = chat_server
    driver = chromium_driver(1000, 900)
    try:
        driver.get(running.url + "/")
        wait = WebDriverWait(driver, 30)
        # no key yet: the page says one is needed (the server's 401), and sending shows the same
        wait.until(lambda d: d.find_element(By.ID, "model").text == "API key needed")
        assert "needs an API key" in driver.find_element(By.ID, "error").text
        driver.find_element(By.ID, "input").send_keys("Hello")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: "needs an API key" in d.find_element(By.ID, "error").text
                   and d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []  # the turn was taken back ...
        assert driver.find_element(By.ID, "input").get_attribute("value") == "Hello"  # ... into the box
        driver.find_element(By.ID, "input").clear()

        key = driver.find_element(By.ID, "api-key")
        key.send_keys(KEY)
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-chat")
        assert driver.find_element(By.ID, "error").text == ""
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")

        driver.execute_script(RECORD_UPDATES)
        first = say(driver, "My name is Ann.")
        text = first.find_element(By.CLASS_NAME, "text").text
        updates = driver.execute_script("return window.updates")
        assert first.get_attribute("data-state") == "done" and first.get_attribute("data-finish") == "stop"
        assert text == "Nice to meet you, Ann."
        # streamed: the page showed growing partial replies before the whole one
        partial = [u for u in updates if u and u != text]
        assert len(partial) >= 3 and all(text.startswith(u) for u in partial) and updates[-1] == text
        assert int(first.get_attribute("data-chunks")) == len([u for u in updates if u])

        second = say(driver, "What is my name?")
        assert second.find_element(By.CLASS_NAME, "text").text == "Your name is Ann."  # it saw the first turn
        assert second.get_attribute("data-state") == "done"
        bubbles = [(m.get_attribute("class"), m.find_element(By.CLASS_NAME, "text").text)
                   for m in driver.find_elements(By.CSS_SELECTOR, ".msg")]
        assert bubbles == [("msg user", "My name is Ann."), ("msg assistant", "Nice to meet you, Ann."),
                           ("msg user", "What is my name?"), ("msg assistant", "Your name is Ann.")]
        assert "tokens/s" in second.find_element(By.CLASS_NAME, "meta").text
        assert driver.find_element(By.ID, "explorer-link").is_displayed()  # this server has one

        folder = Path(os.environ.get("ATTNLAB_SCREENSHOT_DIR") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / SCREENSHOT
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
        assert 10_000 < shot.stat().st_size < 300_000

        # a server error is shown in the page: max tokens over the server's cap (64)
        driver.find_element(By.ID, "max-tokens").send_keys("1000")
        driver.find_element(By.ID, "input").send_keys("I like tea.")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: "at most 64" in d.find_element(By.ID, "error").text)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg")) == 4
        driver.find_element(By.ID, "max-tokens").clear()

        # a new chat forgets the conversation: the name is no longer known
        driver.find_element(By.ID, "new-chat").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == [] and driver.find_element(By.ID, "error").text == ""
        driver.find_element(By.ID, "input").clear()
        driver.execute_script(RECORD_REQUESTS)
        assert say(driver, "Hello there").find_element(By.CLASS_NAME, "text").text == "Hi! How are you?"
        sent = driver.execute_script("return window.sent")
        assert [b["messages"] for b in sent] == [[{"role": "user", "content": "Hello there"}]]
        assert (sent[0]["model"], sent[0]["temperature"], sent[0]["stream"]) == ("tiny-chat", 0, True)
        assert "max_tokens" not in sent[0]  # an empty box: the server's default

        # readable on a phone: nothing wider than the screen
        driver.set_window_size(390, 800)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        if os.environ.get("ATTNLAB_SCREENSHOT_DIR"):
            driver.save_screenshot(str(folder / "serve-chat-page-phone.png"))
        assert script_errors(driver) == []
        assert engine.stats()["failed"] == 0

        # the explorer on the same app, and its link back to the chat
        driver.set_window_size(1000, 900)
        driver.find_element(By.ID, "explorer-link").click()
        wait.until(lambda d: "tiny-chat" in d.find_element(By.ID, "info").text)
        assert driver.current_url == running.url + "/explorer"
        wait.until(lambda d: d.find_element(By.ID, "chat-link").is_displayed())
        assert script_errors(driver) == []
    finally:
        driver.quit()


@pytest.mark.slow
def test_stop_button_aborts_the_stream(chat_server):
    """Stop ends the fetch mid-reply: the partial reply stays, marked stopped, and the server cancels the job;
    New chat mid-reply drops it."""
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    running, engine = chat_server
    calls, release = [0], threading.Event()

    def gate(module, args, out):  # from the third forward on (two tokens out), wait for the test
        calls[0] += 1
        if calls[0] >= 3:
            release.wait(30)

    hook = engine.model.register_forward_hook(gate)
    driver = chromium_driver(900, 700)
    try:
        driver.get(running.url + "/")
        driver.execute_script(f"sessionStorage.setItem('attnlab-api-key', '{KEY}')")
        driver.refresh()
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-chat")
        cancelled = engine.stats()["cancelled"]
        driver.find_element(By.ID, "input").send_keys("Hello there")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant")
        wait.until(lambda d: int(reply.get_attribute("data-chunks") or 0) >= 1)
        assert reply.get_attribute("data-state") == "streaming" and driver.find_element(By.ID, "stop").is_displayed()
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: reply.get_attribute("data-state") == "stopped")
        partial = reply.find_element(By.CLASS_NAME, "text").text
        assert partial and "stopped" in reply.find_element(By.CLASS_NAME, "meta").text  # the partial reply stays
        assert driver.find_element(By.ID, "error").text == "" and not driver.find_element(By.ID, "stop").is_displayed()
        release.set()
        wait.until(lambda d: engine.stats()["cancelled"] > cancelled)  # the server saw the hang-up

        # "New chat" in the middle of a reply: the reply is dropped, and does not come back when it ends
        calls[0], cancelled = 0, engine.stats()["cancelled"]
        release.clear()
        driver.find_element(By.ID, "input").send_keys("I like tea.")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: int(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].get_attribute("data-chunks")
                                 or 0) >= 1 and len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 4)
        driver.find_element(By.ID, "new-chat").click()
        release.set()
        wait.until(lambda d: engine.stats()["cancelled"] > cancelled)
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
        assert not driver.find_element(By.ID, "stop").is_displayed()
        assert script_errors(driver) == []
    finally:
        release.set()
        hook.remove()
        driver.quit()
