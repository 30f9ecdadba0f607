import hashlib

from msghub.auth import Authenticator
from msghub.compact.state import State
from msghub.config import User
from msghub.router import DecisionCache, Route, Router, compile_template

TOKEN = b"tok"
USERS = {"feed": User("feed", token_sha256=hashlib.sha256(TOKEN).digest()), "x": User("x", token_sha256=hashlib.sha256(b"x").digest())}


def make_router():
    routes = [
        Route("quotes", "/quotes/{symbol}", [b"POST"], ["feed"], sink=None),
        Route("anon", "/open/{a}/{b}", [b"POST", b"PUT"], None, sink=None),
    ]
    return Router(routes, Authenticator(USERS))


def state(auth: bytes | None = None) -> State:
    headers = [] if auth is None else [(b"Authorization", auth)]
    return State(headers=headers)


def test_template_captures_one_segment_each():
    pattern = compile_template("/quotes/{symbol}/x")
    assert pattern.fullmatch(b"/quotes/AAPL/x").groupdict() == {"symbol": b"AAPL"}
    assert pattern.fullmatch(b"/quotes/A/B/x") is None


def test_accepted_with_captures_and_user():
    router = make_router()
    d = router.decide(router.authenticate(state(b"Bearer tok")), b"POST", b"/quotes/AAPL?x=1")
    assert (d.status, d.route.name, d.captures, d.user) == (0, "quotes", {"symbol": "AAPL"}, "feed")


def test_percent_encoded_capture_is_decoded():
    router = make_router()
    d = router.decide(router.authenticate(state()), b"POST", b"/open/a%20b/c")
    assert d.captures == {"a": "a b", "b": "c"}


def test_no_route_is_404():
    router = make_router()
    assert router.decide(router.authenticate(state()), b"POST", b"/nowhere").status == 404


def test_wrong_method_is_405_with_allow():
    router = make_router()
    d = router.decide(router.authenticate(state()), b"GET", b"/open/a/b")
    assert d.status == 405
    assert dict(d.headers)[b"Allow"] == b"POST, PUT"


def test_missing_credentials_is_401_with_challenge():
    router = make_router()
    d = router.decide(router.authenticate(state()), b"POST", b"/quotes/A")
    assert d.status == 401 and b"WWW-Authenticate" in dict(d.headers)
    assert d.reason == "credentials required"


def test_bad_credentials_is_401():
    router = make_router()
    d = router.decide(router.authenticate(state(b"Bearer nope")), b"POST", b"/quotes/A")
    assert (d.status, d.reason) == (401, "bad credentials")


def test_user_not_allowed_is_403():
    router = make_router()
    assert router.decide(router.authenticate(state(b"Bearer x")), b"POST", b"/quotes/A").status == 403


def test_cache_authenticates_once_per_state():
    router = make_router()
    calls = []
    original = router.authenticate
    router.authenticate = lambda s: calls.append(s) or original(s)
    cache = DecisionCache(router)
    s = state(b"Bearer tok")
    for symbol in (b"A", b"B", b"A"):
        entry = cache.for_state(s)
        if cache.targets(entry, b"POST").get(b"/quotes/" + symbol) is None:
            cache.decide(entry, b"POST", b"/quotes/" + symbol)
    assert len(calls) == 1
    assert cache.misses == 2


def test_changed_authorization_header_reauthenticates():
    router = make_router()
    cache = DecisionCache(router)
    good = cache.decide(cache.for_state(state(b"Bearer tok")), b"POST", b"/quotes/A")
    bad = cache.decide(cache.for_state(state(b"Bearer nope")), b"POST", b"/quotes/A")
    assert (good.status, bad.status) == (0, 401)


def test_alternating_methods_on_one_target_hit_the_cache():
    router = make_router()
    cache = DecisionCache(router)
    entry = cache.for_state(state())
    answers = []
    for method in (b"POST", b"PUT", b"GET") * 100:
        decision = cache.targets(entry, method).get(b"/open/a/b") or cache.decide(entry, method, b"/open/a/b")
        answers.append((method, decision.status))
    assert cache.misses == 3  # one per method, then only hits
    assert answers[:3] == [(b"POST", 0), (b"PUT", 0), (b"GET", 405)]
    assert answers[3:6] == answers[:3]


def test_cache_is_bounded_across_methods_and_states():
    router = make_router()
    cache = DecisionCache(router)
    entry = cache.for_state(state())
    held = cache.targets(entry, b"POST")  # as the ingress hot path holds it
    for i in range(DecisionCache.MAX_DECISIONS + 1):
        cache.decide(entry, b"POST", b"/open/a/%d" % i)
    assert entry.methods[b"POST"] is held and len(held) == 1  # cleared in place: the holder stays current
    for i in range(2 * DecisionCache.MAX_DECISIONS):  # a new method per request: bounded with the decisions
        cache.decide(entry, b"M%d" % i, b"/open/a/b")
    assert 0 < entry.size <= DecisionCache.MAX_DECISIONS
    assert sum(map(len, entry.methods.values())) == entry.size == len(entry.methods)
    for i in range(DecisionCache.MAX_STATES + 5):
        cache.for_state(State(headers=[(b"X", b"%d" % i)]))
    assert len(cache._states) <= DecisionCache.MAX_STATES


def test_bad_credentials_are_refused_even_on_an_anonymous_route():
    router = make_router()
    d = router.decide(router.authenticate(state(b"Bearer stale")), b"POST", b"/open/a/b")
    assert (d.status, d.reason) == (401, "bad credentials")
