"""The admin port's status page in a real headless Chromium, against the real twistd.

Driven with Playwright's Python package pointed at Debian's /usr/bin/chromium
(no browser download).  Skipped only when either is missing.
"""

from __future__ import annotations

import http.client
import shutil
import threading
import time
import uuid

import pytest

from msghub.testing import HubProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
if not shutil.which(CHROMIUM):
    pytest.skip("no chromium at /usr/bin/chromium", allow_module_level=True)

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
CONF = """
[[routes]]
name = "visits"
match = "/visits/{page}"
discard = true

[[routes]]
name = "orders"
match = "/orders/{kind}"
spool = "orders"

[[subscriptions]]
match = "/tap/visits"
route = "visits"
cors_origins = ["*"]
"""


def start_hub(workdir, conf: str, events_path: str) -> HubProcess:
    process = HubProcess(workdir, conf)
    with open(process.conf_path, "a") as f:  # the demo's URLs name the HTTP port, known only now
        f.write(
            "[status]\n"
            f'demo_post = "http://127.0.0.1:{process.http_port}/visits/page"\n'
            f'demo_events = "http://127.0.0.1:{process.http_port}{events_path}"\n'
        )
    return process.start()


@pytest.fixture
def hub(tmp_path):
    process = start_hub(tmp_path / "hub", CONF, "/tap/visits")
    yield process
    process.stop()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def send_orders(port: int, bodies: list[bytes], pause: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for body in bodies:
        conn.request("POST", "/orders/paper", body=body, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        response.read()
        assert response.status == 202
        time.sleep(pause)
    conn.close()


def accepted(page, route: str) -> int:
    return int(page.text_content(f'#routes tr[data-name="{route}"] .accepted').replace(",", ""))


def test_status_page_shows_routes_rising_counters_tail_and_visitors(hub, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(15_000)
    page.goto(f"http://127.0.0.1:{hub.admin_port}/")

    # The configured routes are listed, with their destinations.
    page.wait_for_selector('#routes tr[data-name="orders"]')
    assert page.eval_on_selector_all("#routes tbody tr", "rows => rows.map(r => r.dataset.name)") == ["visits", "orders"]
    assert page.text_content('#routes tr[data-name="orders"] .destination') == "spool orders"
    assert page.text_content('#destinations tr[data-name="spool:orders"] .badge') == "ok"

    # The demo: this view was POSTed to the visits route and came back through the tap,
    # and a second viewer shows up on the first page too.
    page.wait_for_selector("#visitors li:has-text('HeadlessChrome')")
    second = browser.new_page()
    second.goto(f"http://127.0.0.1:{hub.admin_port}/")
    page.wait_for_function("document.querySelectorAll('#visitors li').length >= 2")
    second.close()

    # The tail follows the chosen route; counters rise while messages are sent.
    page.select_option("#tail-route", "orders")
    page.wait_for_selector("#tail-state:has-text('following orders')")
    marker = f"tail-check-{uuid.uuid4().hex[:8]}"
    bodies = [f"{marker} order {i}".encode() for i in range(30)]
    sender = threading.Thread(target=send_orders, args=(hub.http_port, bodies, 0.07))
    sender.start()
    try:
        page.wait_for_function(
            "document.querySelector('#routes tr[data-name=\"orders\"] .accepted').textContent !== '0'"
        )
        during = accepted(page, "orders")
    finally:
        sender.join(20)
    assert not sender.is_alive()
    page.wait_for_function(
        "document.querySelector('#routes tr[data-name=\"orders\"] .accepted').textContent === '30'"
    )
    assert 0 < during < 30
    page.wait_for_selector(f"#tail li:has-text('{marker} order 29')")
    assert page.locator(f"#tail li:has-text('{marker}')").count() == 30
    page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)


def test_the_visitors_demo_goes_through_rabbitmq_with_amqp_set(rabbit, browser, tmp_path):
    conf = f"""
[amqp]
url = "{rabbit.url}"

[[routes]]
name = "visits"
match = "/visits/{{page}}"
amqp = {{exchange = "amq.topic", routing_key = "visits", mandatory = false}}

[[subscriptions]]
name = "visits"
match = "/subscribe/visits"
amqp = {{exchange = "amq.topic", binding = "visits"}}
cors_origins = ["*"]
"""
    process = start_hub(tmp_path / "hub", conf, "/subscribe/visits")
    try:
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"http://127.0.0.1:{process.admin_port}/")
        page.wait_for_selector('#destinations tr[data-name="amqp:publish"] .badge.connected')
        page.wait_for_selector("#visitors li:has-text('HeadlessChrome')")
        second = browser.new_page()
        second.goto(f"http://127.0.0.1:{process.admin_port}/")
        page.wait_for_function("document.querySelectorAll('#visitors li').length >= 2")
        second.close()
        page.screenshot(path=str(tmp_path / "status-page-amqp.png"), full_page=True)
    finally:
        process.stop()
