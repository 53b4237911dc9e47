"""The attention explorer: its computation, its routes on the server's app (`/explorer`), the CLI
(`attnlab viz serve`), and the page in headless Chromium."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from attnlab import config
from attnlab.cli import main
from attnlab.cli._common import load_for_inference
from attnlab.errors import AttnlabError
from attnlab.models import build
from attnlab.serve.app import create_app
from attnlab.serve.pages import page_router
from attnlab.serve.runner import ServeConfig, start_in_thread
from attnlab.serve.security import SecurityConfig
from attnlab.train.objectives import MASK_TOKEN
from attnlab.viz import Explorer, ExplorerConfig, ExplorerInputError
from tests._browser import chromium_driver, script_errors

TEXT = "ROMEO. But soft, what light"
API = "/explorer/api"


def router_app(explorer: Explorer | None) -> FastAPI:
    """An app with only the explorer's routes (no /v1, no chat page, no security middleware)."""
    app = FastAPI()
    app.include_router(page_router(chat=False, explorer=explorer))
    return app


@pytest.fixture(scope="module")
def loaded(trained_run):
    model, tok, _, _ = load_for_inference(str(trained_run), "cpu")
    return model, tok


@pytest.fixture(scope="module")
def explorer(loaded):
    return Explorer(*loaded, name="tiny-run")


@pytest.fixture(scope="module")
def client(explorer):
    with TestClient(router_app(explorer)) as c:
        yield c


@pytest.fixture(scope="module")
def server(explorer):
    """The explorer's routes served by uvicorn on a free port, from a thread."""
    running = start_in_thread(router_app(explorer), ServeConfig(port=0, access_log=False))
    yield running
    running.stop()


def request(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict | str, str]:
    """(status, JSON or text, content type) of one GET (or POST of ``body``); errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, ctype, raw = r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        status, ctype, raw = e.code, e.headers["Content-Type"], e.read()
    return status, (json.loads(raw) if "json" in (ctype or "") else raw.decode()), ctype


def analyze(client, text: str) -> tuple[int, dict]:
    r = client.post(f"{API}/attention", json={"text": text})
    return r.status_code, r.json()


# --- JSON API -----------------------------------------------------------------------------------
def test_info(client):
    r = client.get(f"{API}/info")
    assert r.status_code == 200
    info = r.json()
    assert (info["name"], info["arch"], info["n_layer"], info["n_head"], info["context"]) == ("tiny-run", "decoder",
                                                                                             2, 2, 64)
    assert info["max_tokens"] == 64 and info["top_k"] == 10 and info["parameters"] > 10_000


def test_attention_matches_the_model(client, loaded):
    model, tok = loaded
    status, out = analyze(client, TEXT)
    assert status == 200
    ids = tok.encode(TEXT)
    t = len(ids)
    assert out["ids"] == ids and out["tokens"] == tok.token_strings(ids) and t > 4
    w = torch.tensor(out["weights"], dtype=torch.float64)  # (L, H, T, T)
    assert w.shape == (out["n_layer"], out["n_head"], t, t) == (2, 2, t, t)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, t, dtype=torch.float64), atol=1e-3)
    assert torch.all(w.triu(1) == 0)  # causal: nothing attends to the future ...
    # ... and 0 means masked only: tiny weights do not round to 0
    assert torch.all(w[..., torch.ones(t, t, dtype=torch.bool).tril()] > 0)
    with torch.no_grad():
        logits, ref = model(torch.tensor([ids]), return_weights=True)
    assert torch.allclose(w, torch.stack([r[0] for r in ref]).double(), atol=1e-4)  # rounded to 4 decimals
    top = out["next_token"]
    probs = [c["prob"] for c in top]
    assert len(top) == 10 and probs == sorted(probs, reverse=True) and 0 < probs[-1] <= probs[0] <= 1
    assert top[0]["id"] == int(logits[0, -1].argmax()) and top[0]["token"] == tok.token_strings([top[0]["id"]])[0]
    assert abs(probs[0] - float(logits[0, -1].softmax(-1).max())) < 1e-4
    assert out["prediction_position"] == t - 1 and out["next_token_by_position"][-1] == top
    assert len(out["next_token_by_position"]) == t
    assert out["next_token_by_position"][0][0]["id"] == int(logits[0, 0].argmax())


DEEP = b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("body, code, param, needle", [
    (b"{not json", "invalid_json", None, "the body is not valid JSON"),
    (b"", "invalid_json", None, "the body is not valid JSON"),
    (b"[1, 2]", "invalid_json", None, "the body must be a JSON object"),
    (DEEP, "invalid_json", None, "not valid JSON (recursion limit exceeded"),
    (b"{}", "invalid_text", "text", "'text' is missing"),
    (b'{"text": 5}', "invalid_text", "text", "'text' must be a JSON string, got int"),
    (b'{"text": null}', "invalid_text", "text", "'text' must be a JSON string, got NoneType"),
    (b'{"text": "But", "layers": [0]}', "unknown_field", "layers", "unknown field 'layers'"),
    (b'{"text": ""}', "empty_text", "text", "text is empty"),
    (b'{"text": "a \\ud800 b"}', "invalid_json", None, "not valid JSON (unexpected end of hex escape"),
    (json.dumps({"text": "x " * 80}).encode(), "text_too_long", "text", "over the limit of 64"),
    (json.dumps({"text": "x" * 5000}).encode(), "text_too_long", "text", "5000 characters, far over the limit"),
])
def test_bad_requests_get_json_errors(client, body, code, param, needle):
    r = client.post(f"{API}/attention", content=body, headers={"Content-Type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error")
    assert needle in err["message"] and "; " in err["message"], err  # "the problem; the fix"
    assert set(r.json()) == {"error"} and set(err) == {"message", "type", "param", "code"}
    assert analyze(client, "But soft")[0] == 200  # still serving


def test_too_long_text_names_the_limit(client, loaded):
    n = len(loaded[1].encode("x " * 80))
    status, out = analyze(client, "x " * 80)
    assert status == 400 and n > 64
    assert out["error"]["message"] == (f"text is {n} tokens, over the limit of 64 (the model's context); "
                                       "send a shorter text")


def test_analyze_refuses_what_is_not_text(explorer):
    with pytest.raises(ExplorerInputError, match="lone surrogate '\\\\ud800' at character 2") as e:
        explorer.analyze("a \ud800")
    assert e.value.code == "invalid_text" and isinstance(e.value, AttnlabError)
    with pytest.raises(ExplorerInputError, match="a JSON string"):
        explorer.analyze(["But"])


def test_pages_and_redirect(client):
    r = client.get("/explorer?q=1")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    page = r.text
    assert 'id="heatmap"' in page and 'id="next-list"' in page and '"/api/"' in page and 'API + "attention"' in page
    assert 'src="http' not in page and 'href="http' not in page and "@import" not in page  # works offline
    assert client.head("/explorer").status_code == 200
    r = client.get("/", follow_redirects=False)  # no model to chat with: / is the explorer
    assert r.status_code == 307 and r.headers["location"] == "/explorer"
    assert client.get("/").url.path == "/explorer"


def test_no_pages_without_chat_or_explorer():
    with TestClient(router_app(None)) as c:
        r = c.get("/")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert "no model to chat with and no explorer" in r.json()["error"]["message"]
        assert c.get("/explorer").status_code == 404 and c.get(f"{API}/info").status_code == 404


def test_on_the_server_app(explorer):
    """`attnlab viz serve`'s app: create_app with only the explorer, behind the server's checks."""
    app = create_app(None, explorer=explorer, security=SecurityConfig(max_body_bytes=4096))
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/", follow_redirects=False).headers["location"] == "/explorer"
        assert c.get("/explorer").status_code == 200 and c.get(f"{API}/info").json()["name"] == "tiny-run"
        assert c.post(f"{API}/attention", json={"text": "But soft"}).status_code == 200
        r = c.post(f"{API}/attention", json={"text": "x" * 5000})
        assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = c.post(f"{API}/attention", content=b'{"text": "But"}', headers={"Content-Type": "text/plain"})
        assert r.status_code == 415  # a "simple" cross-site form POST cannot run the model
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 404  # no model to chat with


def test_api_in_openapi(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {f"{API}/info", f"{API}/attention"}  # the HTML pages are not API
    body = paths[f"{API}/attention"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["text"] and body["additionalProperties"] is False


def test_model_runs_off_the_event_loop_one_at_a_time(server, loaded):
    """While one analysis runs, the server answers other requests, and a second analysis waits its turn."""
    model = loaded[0]
    entered, release = threading.Event(), threading.Event()
    running, most = [0], [0]
    lock = threading.Lock()

    def pre(module, args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        entered.set()
        release.wait(20)

    def post(module, args, out):
        with lock:
            running[0] -= 1

    hooks = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    results: list[int] = []
    body = json.dumps({"text": TEXT}).encode()
    threads = [threading.Thread(target=lambda: results.append(request(f"{server.url}{API}/attention", body)[0]))
               for _ in range(3)]
    try:
        threads[0].start()
        assert entered.wait(20), "the model never ran"
        for t in threads[1:]:
            t.start()
        # the event loop is free while the model is busy (a blocked loop would time out here)
        assert request(f"{server.url}{API}/info", timeout=10)[0] == 200
        assert request(f"{server.url}/explorer", timeout=10)[0] == 200
    finally:
        release.set()
        for t in threads:
            t.join(30)
        for h in hooks:
            h.remove()
    assert results == [200, 200, 200] and most[0] == 1


# --- other architectures ------------------------------------------------------------------------
def test_encoder_predicts_at_the_mask(loaded):
    _, tok = loaded
    tok = tok.with_special_tokens([MASK_TOKEN])
    cfg = config.load("bert-tiny", [f"model.vocab_size={tok.vocab_size}", "model.n_layer=2", "model.d_model=32",
                                    "model.n_head=2", "model.d_ff=64", "model.block_size=32"])
    torch.manual_seed(0)
    explorer = Explorer(build(cfg).eval(), tok, cfg=ExplorerConfig(top_k=3))
    out = explorer.analyze(f"But {MASK_TOKEN} soft")
    ids = tok.encode(f"But {MASK_TOKEN} soft")
    w = torch.tensor(out["weights"])  # (L, H, T, T)
    assert w.shape == (2, 2, len(ids), len(ids)) and torch.all(w.triu(1).sum((-2, -1)) > 0)  # bidirectional
    assert out["prediction_position"] == ids.index(tok.token_id(MASK_TOKEN)) and len(out["next_token"]) == 3
    assert out["next_token_by_position"] == [] and explorer.info()["mask_token"] == MASK_TOKEN
    assert explorer.analyze("But soft")["next_token"] == []  # no mask, no prediction


@pytest.mark.parametrize("preset, overrides, needle", [
    ("t5-tiny", ["model.n_layer=1", "model.n_decoder_layer=1", "model.d_model=32", "model.d_ff=64"],
     "this one is model.arch=encoder_decoder: use `attnlab viz attention` for it"),
    ("gpt-tiny", ["model.mixer=linear", "model.n_layer=1", "model.d_model=32"], "model.mixer=linear has no attention"),
])
def test_refuses_models_without_attention_to_show(loaded, preset, overrides, needle):
    with pytest.raises(AttnlabError, match="^.*" + needle.replace("(", r"\(").replace(")", r"\)")):
        Explorer(build(config.load(preset, ["model.vocab_size=600", *overrides])), loaded[1])


# --- CLI ------------------------------------------------------------------------------------------
def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["viz", "serve", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--port" in out and "/explorer/api/attention" in out


@pytest.mark.parametrize("extra, needle", [
    (["--port", "70000"], "--port must be in 0..65535, got 70000"),
    (["--max-tokens", "0"], "max_tokens (--max-tokens) must be positive, got 0"),
    (["--top-k", "-1"], "top_k (--top-k) must be positive, got -1"),
])
def test_cli_errors(capsys, trained_run, extra, needle, one_line_error):
    one_line_error(capsys, main(["viz", "serve", str(trained_run), *extra]), needle)


def test_cli_port_in_use(capsys, trained_run, one_line_error):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["viz", "serve", str(trained_run), "--port", str(port), "--device", "cpu"])
    one_line_error(capsys, code, f"cannot listen on 127.0.0.1:{port} (Address already in use); pick another --port")


def test_cli_missing_checkpoint(capsys, tmp_path, one_line_error):
    one_line_error(capsys, main(["viz", "serve", str(tmp_path / "nope")]), "not found")


@pytest.mark.slow
def test_cli_serves_until_ctrl_c(trained_run):
    proc = subprocess.Popen([sys.executable, "-m", "attnlab", "viz", "serve", str(trained_run), "--port", "0",
                             "--device", "cpu", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready, "no banner within 60 s"
        banner = proc.stderr.readline()
        assert "attention explorer for run at http://127.0.0.1:" in banner and "/explorer " in banner, banner
        url = banner.split(" at ")[1].split()[0]  # http://127.0.0.1:PORT/explorer
        status, info, _ = request(url + "/api/info")
        assert status == 200 and info["name"] == "run"
        status, out, _ = request(url + "/api/attention", json.dumps({"text": "But soft"}).encode())
        assert status == 200 and out["tokens"]
        assert request(url)[0] == 200 and request(url.removesuffix("explorer"))[0] == 200  # / redirects here
        status, out, _ = request(url + "/api/attention", b"{}")
        assert status == 400 and out["error"]["code"] == "invalid_text"
        proc.send_signal(signal.SIGINT)
        rc, err = proc.wait(timeout=20), proc.stderr.read()
        assert rc == 0, err[-2000:]  # -6 was an abort at exit (the model freed on a dying thread)
        assert "attnlab viz serve: stopped" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the page in headless Chromium ----------------------------------------------------------------
def explore(driver, url: str, text: str, timeout: float = 30) -> None:
    """Open the page, type ``text``, press Enter and wait until the heatmap is drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: "layers" in d.find_element(By.ID, "info").text)
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                         in ("ready", "error"))


def test_page_in_headless_chromium(server, loaded, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = chromium_driver()
    try:
        explore(driver, server.url + "/explorer", TEXT)
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready"
        assert "tiny-run" in driver.find_element(By.ID, "info").text
        t = len(loaded[1].encode(TEXT))
        tokens = driver.find_elements(By.CSS_SELECTOR, "#tokens .tok")
        assert len(tokens) == t
        # the big heatmap: T x T cells, coloured below the diagonal, grey (masked) above it
        fills = driver.execute_script(
            "return [...document.querySelectorAll('#heatmap rect.cell')].map(r => r.getAttribute('fill'))")
        grey = "rgb(226,229,234)"
        assert len(fills) == t * t
        assert all((f == grey) == (k > q) for i, f in enumerate(fills) for q, k in [divmod(i, t)])
        assert len(set(fills)) > 5
        # the thumbnails (canvas): one per head plus the mean, with real pixels
        colours = driver.execute_script(
            "return [...document.querySelectorAll('#thumbs canvas')].map(c => { const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; const s = new Set();"
            " for (let i = 0; i < d.length; i += 4) s.add(d[i] + ',' + d[i+1] + ',' + d[i+2] + ',' + d[i+3]);"
            " return s.size; })")
        assert len(colours) == 3 and min(colours) > 3
        # hovering token 3 outlines its row and shades exactly the tokens it may attend to
        ActionChains(driver).move_to_element(tokens[3]).perform()
        assert driver.find_element(By.ID, "row-hl").get_attribute("visibility") == "visible"
        assert "query" in tokens[3].get_attribute("class")
        shaded = [bool(tok.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent"))
                  for tok in tokens]
        assert shaded == [i <= 3 for i in range(t)]
        assert "attends most to" in driver.find_element(By.ID, "hover-info").text
        assert driver.find_element(By.ID, "next-title").text.startswith("Next token after “")
        # the next-token distribution: ten bars with percentages
        bars = driver.find_elements(By.CSS_SELECTOR, "#next-list .bar")
        assert len(bars) == 10 and all(b.find_element(By.CLASS_NAME, "pct").text.endswith("%") for b in bars)
        # layer / head selectors redraw the big heatmap
        driver.find_element(By.CSS_SELECTOR, "#layer-sel button[data-layer='1']").click()
        driver.find_element(By.CSS_SELECTOR, "#head-sel button[data-head='mean']").click()
        assert driver.find_element(By.ID, "heatmap-title").text == "Layer 1, mean over heads"
        shot = tmp_path / "explorer.png"
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
        assert shot.stat().st_size > 20_000
        # a bad input shows the server's message instead of breaking the page
        explore(driver, server.url + "/explorer", "x " * 80)
        assert "over the limit of 64" in driver.find_element(By.ID, "status").text
        assert script_errors(driver) == []
        assert not driver.find_element(By.ID, "chat-link").is_displayed()  # no chat page on this server
    finally:
        driver.quit()
