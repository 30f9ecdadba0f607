"""The start-up summary names every route, the broker and every target, never a secret."""

from msghub.config import load
from msghub.startup import safe_url, summary


def test_a_conf_is_summed_up_route_by_route_without_secrets(tmp_path):
    conf = tmp_path / "msghub.toml"
    conf.write_text(
        '[users.feed]\ntoken_sha256 = "' + "ab" * 32 + '"\n'
        '[[routes]]\nname = "quotes"\nmatch = "/quotes/{symbol}"\nusers = ["feed"]\nspool = "quotes"\n'
        '[[routes]]\nname = "drop"\nmatch = "/drop/{x}"\nmethods = ["POST", "PUT"]\ndiscard = true\n'
        '[[routes]]\nname = "hook"\nmatch = "/hook/{x}"\nwebhooks = ["orders"]\n'
        '[webhooks.orders]\nurl = "https://example.com:8443/in?token=s3cr3t"\n'
        'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n'
    )
    lines = summary(load(str(conf)))
    assert lines == [
        "route quotes: POST /quotes/{symbol} -> spool quotes (users feed)",
        "route drop: POST,PUT /drop/{x} -> discard (anonymous)",
        "route hook: POST /hook/{x} -> webhooks orders (anonymous)",
        "webhook target orders: https://example.com:8443/in",
    ]


def test_safe_url_drops_credentials_query_and_fragment():
    assert safe_url("http://a:b@[::1]:80/x?y=1#z") == "http://[::1]:80/x"
