"""serve/metrics.py: counters move with requests, histograms have buckets, the text parses."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from attnlab.serve import metrics as metrics_mod
from attnlab.serve.metrics import LATENCY_BUCKETS, Metrics
from attnlab.serve.security import SecurityConfig
from attnlab.serve.security import install as install_security


def small_app(m: Metrics, key: str | None = None) -> TestClient:
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/items/{item}")
    def item(item: int):
        return {"item": item}

    install_security(app, SecurityConfig(api_key=key))  # the order create_app uses: metrics outermost
    metrics_mod.install(app, m)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def scrape(c: TestClient) -> dict[str, dict]:
    """name -> {tuple(sorted(labels.items())) (+ sample name): value} of one GET /metrics."""
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(fam.name, {})[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests_count(data: dict, route: str, status: str, method: str = "GET") -> float:
    key = ("attnlab_requests_total", (("method", method), ("route", route), ("status", status)))
    return data.get("attnlab_requests", {}).get(key, 0.0)


def test_requests_counted_by_route_template_and_status():
    c = small_app(Metrics(), key="k")
    before = scrape(c)
    assert requests_count(before, "/health", "200") == 0
    for _ in range(3):
        assert c.get("/health").status_code == 200
    assert c.post("/v1/items/7", headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
                  content=b"{}").status_code == 200
    assert c.post("/v1/items/8", headers={"Content-Type": "application/json"}, content=b"{}").status_code == 401
    for path in ("/nope", "/nope/2", "/x" * 50):
        assert c.get(path).status_code == 404
    after = scrape(c)
    assert requests_count(after, "/health", "200") == 3
    assert requests_count(after, "/v1/items/{item}", "200", "POST") == 1  # the template, not /v1/items/7
    assert requests_count(after, "/v1/items/{item}", "401", "POST") == 1  # refused ones are counted too
    assert requests_count(after, "other", "404") == 3  # odd paths share one label
    assert requests_count(after, "/metrics", "200") == 1  # the first scrape
    routes = {dict(labels)["route"] for (_, labels) in after["attnlab_requests"]}
    assert routes == {"/health", "/v1/items/{item}", "other", "/metrics"}


def test_latency_histogram_has_buckets():
    c = small_app(Metrics())
    c.get("/health")
    data = scrape(c)["attnlab_request_duration_seconds"]
    buckets = {dict(labels)["le"]: v for (name, labels), v in data.items()
               if name.endswith("_bucket") and dict(labels)["route"] == "/health"}
    assert len(buckets) == len(LATENCY_BUCKETS) + 1 and buckets["+Inf"] == 1
    values = [buckets[k] for k in sorted(buckets, key=float)]
    assert values == sorted(values)  # cumulative
    count = data[("attnlab_request_duration_seconds_count", (("route", "/health"),))]
    assert count == 1


def test_tokens_and_ttft():
    m = Metrics()
    c = small_app(m)
    m.observe_tokens(12, 5)
    m.observe_tokens(3, 0)
    m.observe_ttft(0.03)
    m.observe_ttft(0.7)
    data = scrape(c)
    assert data["attnlab_prompt_tokens"][("attnlab_prompt_tokens_total", ())] == 15
    assert data["attnlab_completion_tokens"][("attnlab_completion_tokens_total", ())] == 5
    ttft = data["attnlab_time_to_first_token_seconds"]
    assert ttft[("attnlab_time_to_first_token_seconds_count", ())] == 2
    assert ttft[("attnlab_time_to_first_token_seconds_bucket", (("le", "0.05"),))] == 1
    assert ttft[("attnlab_time_to_first_token_seconds_bucket", (("le", "1.0"),))] == 2
    assert abs(ttft[("attnlab_time_to_first_token_seconds_sum", ())] - 0.73) < 1e-9


def test_queue_and_running_read_from_stats_at_scrape_time():
    stats = {"queued": 4, "running": 2, "served": 10, "failed": 1, "cancelled": 0, "batches": 3, "joined": 5}
    c = small_app(Metrics(lambda: dict(stats)))
    data = scrape(c)
    assert data["attnlab_queue_length"][("attnlab_queue_length", ())] == 4
    assert data["attnlab_running_requests"][("attnlab_running_requests", ())] == 2
    assert data["attnlab_scheduler_events"][("attnlab_scheduler_events_total", (("event", "served"),))] == 10
    stats.update(queued=0, running=7)
    data = scrape(c)
    assert data["attnlab_queue_length"][("attnlab_queue_length", ())] == 0
    assert data["attnlab_running_requests"][("attnlab_running_requests", ())] == 7


def test_no_model_no_scheduler_gauges_and_apps_do_not_share_counters():
    a, b = small_app(Metrics()), small_app(Metrics())  # a global registry would refuse the second
    a.get("/health")
    a.get("/health")
    assert requests_count(scrape(a), "/health", "200") == 2
    data = scrape(b)
    assert requests_count(data, "/health", "200") == 0
    assert "attnlab_queue_length" not in data


def test_render_is_the_prometheus_text_format():
    m = Metrics(lambda: {"queued": 1, "running": 1})
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=")  # prometheus_client's own exposition type
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"attnlab_requests", "attnlab_request_duration_seconds", "attnlab_time_to_first_token_seconds",
            "attnlab_prompt_tokens", "attnlab_completion_tokens", "attnlab_queue_length",
            "attnlab_running_requests"} <= names
