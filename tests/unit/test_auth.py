"""msghub.auth (password hashes, the Authenticator and its cache) and msghub-passwd."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msghub import auth, passwd
from msghub.auth import (
    BAD_CREDENTIALS,
    NO_CREDENTIALS,
    AuthResult,
    AuthStatus,
    Authenticator,
    hash_password,
    parse_password_hash,
    verify_password,
)
from msghub.config import User

N = 16  # scrypt cost for tests: verification must read it back from the hash

TOKEN = "feed-token-0123456789"
OPS_HASH = hash_password("ops pässword", n=N)
USERS = {
    "feed": User("feed", token_sha256=hashlib.sha256(TOKEN.encode()).digest()),
    "ops": User("ops", password=OPS_HASH),
}


def bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


def basic(user_pass: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user_pass)


@pytest.fixture
def scrypt_calls(monkeypatch):
    calls = []
    real = auth._scrypt

    def counting(password, h):
        calls.append(password)
        return real(password, h)

    monkeypatch.setattr(auth, "_scrypt", counting)
    return calls


# --- password hashes ---------------------------------------------------------------


def test_hash_password_format_has_cost_16_byte_salt_and_32_byte_key():
    kind, n, r, p, salt, key = hash_password("pw", n=N, r=2, p=3).split("$")
    assert (kind, n, r, p) == ("scrypt", "16", "2", "3")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(key)) == 32


def test_hash_password_is_scrypt_of_utf8_password_with_the_stored_salt():
    h = parse_password_hash(hash_password("pässword", n=N))
    assert h.key == hashlib.scrypt("pässword".encode(), salt=h.salt, n=N, r=8, p=1, dklen=32)


def test_hash_password_salts_each_hash_differently():
    assert hash_password("pw", n=N) != hash_password("pw", n=N)


def test_verify_password_accepts_the_password_and_rejects_others():
    stored = hash_password("correct horse", n=N)
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horse ", stored)
    assert not verify_password("", stored)


def test_verify_password_uses_the_cost_in_the_stored_string():
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"pw", salt=salt, n=32, r=1, p=2, dklen=32)
    stored = f"scrypt$32$1$2${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert verify_password("pw", stored)


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ("hunter2", "expected scrypt$N$R$P$SALT$KEY"),
        ("bcrypt$16$8$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5a2V5", "expected scrypt$N$R$P$SALT$KEY"),
        ("scrypt$x$8$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5a2V5", "N, R and P must be decimal integers"),
        ("scrypt$15$8$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5a2V5", "N must be a power of 2 above 1, not 15"),
        ("scrypt$16$0$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5a2V5", "R and P must be 1..64, not 0 and 1"),
        ("scrypt$16$8$1$!!$a2V5a2V5a2V5a2V5a2V5a2V5", "SALT and KEY must be base64"),
        ("scrypt$16$8$1$c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5", "SALT must be at least 8 bytes and KEY at least 16"),
        ("scrypt$1048576$8$1$c2FsdHNhbHQ=$a2V5a2V5a2V5a2V5a2V5a2V5", "N=1048576, R=8, P=1 would need 1025 MiB per check"),
    ],
)
def test_parse_password_hash_says_what_is_wrong(stored, problem):
    with pytest.raises(ValueError) as info:
        parse_password_hash(stored)
    assert str(info.value) == problem


def test_hash_password_refuses_a_cost_the_config_would_refuse_before_hashing(scrypt_calls):
    with pytest.raises(ValueError, match="MiB per check"):
        hash_password("pw", n=2**22)
    assert scrypt_calls == []


@given(st.text(max_size=80))
def test_parse_password_hash_raises_only_value_error(text):
    try:
        parse_password_hash(text)
    except ValueError:
        pass


# --- Authenticator -------------------------------------------------------------------


def test_no_header_is_no_credentials():
    assert Authenticator(USERS).authenticate(None) is NO_CREDENTIALS


def test_bearer_token_authenticates_its_user():
    result = Authenticator(USERS).authenticate(bearer(TOKEN))
    assert result == AuthResult(AuthStatus.AUTHENTICATED, "feed")


@pytest.mark.parametrize("header", [b"bearer " + TOKEN.encode(), b"BEARER  " + TOKEN.encode() + b" "])
def test_bearer_scheme_is_case_insensitive_and_spaces_are_tolerated(header):
    assert Authenticator(USERS).authenticate(header).user == "feed"


def test_unknown_bearer_token_is_bad_credentials():
    assert Authenticator(USERS).authenticate(bearer("guess")) is BAD_CREDENTIALS


def test_basic_password_authenticates_its_user():
    result = Authenticator(USERS).authenticate(basic("ops:ops pässword".encode()))
    assert result == AuthResult(AuthStatus.AUTHENTICATED, "ops")


@pytest.mark.parametrize(
    "user_pass",
    [
        "ops:wrong".encode(),
        "ops:ops pässword ".encode(),
        "nobody:ops pässword".encode(),
        b"feed:" + TOKEN.encode(),  # feed has a token but no password
        "ops:ops pässword".encode("latin-1"),  # not the UTF-8 the hash was made from
    ],
)
def test_basic_with_wrong_password_or_user_is_bad_credentials(user_pass):
    assert Authenticator(USERS).authenticate(basic(user_pass)) is BAD_CREDENTIALS


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"   ",
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        b"Basic",
        b"Basic !!!!",
        b"Basic b3Bz",  # "ops": no colon
        b"Basic " + base64.b64encode(b"\xff\xfe:pw"),
        b"Digest username=ops",
        b"\xff\xfe\x00",
        b"Basic " + b"A" * 5000,
    ],
)
def test_malformed_header_is_bad_credentials_not_an_exception(header):
    assert Authenticator(USERS).authenticate(header) is BAD_CREDENTIALS


@given(st.one_of(st.binary(max_size=200), st.binary(max_size=100).map(basic)))
def test_authenticate_never_raises(header):
    assert Authenticator(USERS).authenticate(header).status in AuthStatus


def test_repeated_basic_header_is_a_counted_cache_hit_without_scrypt(scrypt_calls):
    authenticator = Authenticator(USERS)
    header = basic("ops:ops pässword".encode())
    first = authenticator.authenticate(header)
    assert authenticator.cache_hits == 0
    assert authenticator.authenticate(header) is first
    assert authenticator.authenticate(header) is first
    assert authenticator.cache_hits == 2
    assert len(scrypt_calls) == 1


def test_wrong_password_is_cached_so_retries_cost_no_scrypt(scrypt_calls):
    authenticator = Authenticator(USERS)
    header = basic(b"ops:wrong")
    for _ in range(5):
        assert authenticator.authenticate(header) is BAD_CREDENTIALS
    assert len(scrypt_calls) == 1
    assert authenticator.cache_hits == 4


def test_bearer_results_are_cached():
    authenticator = Authenticator(USERS)
    authenticator.authenticate(bearer(TOKEN))
    authenticator.authenticate(bearer(TOKEN))
    assert authenticator.cache_hits == 1


@pytest.mark.parametrize(
    "header", [b"junk", bearer("guess"), basic(b"nobody:pw"), b"Basic " + b"A" * 5000]
)
def test_cheap_rejections_are_not_cached(header):
    authenticator = Authenticator(USERS)
    authenticator.authenticate(header)
    authenticator.authenticate(header)
    assert authenticator.cache_size == 0
    assert authenticator.cache_hits == 0


def test_failure_cache_is_bounded_and_evicts_the_least_recently_used(scrypt_calls):
    authenticator = Authenticator(USERS, failures_max=2)
    a, b, c = (basic(f"ops:wrong {i}".encode()) for i in range(3))
    authenticator.authenticate(a)
    authenticator.authenticate(b)
    authenticator.authenticate(a)  # a is now the most recently used
    authenticator.authenticate(c)  # evicts b
    assert authenticator.cache_size == 2
    assert len(scrypt_calls) == 3
    authenticator.authenticate(a)
    assert len(scrypt_calls) == 3
    authenticator.authenticate(b)
    assert len(scrypt_calls) == 4
    assert authenticator.cache_size == 2


def test_cache_max_below_one_is_refused():
    with pytest.raises(ValueError):
        Authenticator(USERS, cache_max=0)


# --- msghub-passwd ------------------------------------------------------------------------


def test_passwd_token_prints_a_token_and_its_sha256_line(capsys):
    assert passwd.main(["--token"]) == 0
    token, line = capsys.readouterr().out.splitlines()
    assert len(token) >= 43
    assert line == f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"'


def test_passwd_hashes_one_line_from_stdin_keeping_inner_spaces(capsys, monkeypatch):
    monkeypatch.setattr(passwd, "hash_password", lambda pw: hash_password(pw, n=N))
    monkeypatch.setattr("sys.stdin", io.StringIO(" two words \nnext line\n"))
    assert passwd.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith('password = "scrypt$') and out.endswith('"\n')
    assert verify_password(" two words ", out.split('"')[1])


def test_passwd_refuses_an_empty_password(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert passwd.main([]) == 1
    assert capsys.readouterr().err == "msghub-passwd: empty password\n"


def test_a_flood_of_distinct_wrong_passwords_never_evicts_a_cached_success(scrypt_calls):
    authenticator = Authenticator(USERS, cache_max=1, failures_max=4)
    good = basic("ops:ops pässword".encode())
    authenticator.authenticate(good)
    for i in range(20):
        authenticator.authenticate(basic(f"ops:wrong {i}".encode()))
    calls = len(scrypt_calls)
    assert authenticator.authenticate(good).user == "ops"
    assert len(scrypt_calls) == calls
    assert authenticator.cache_size == 5


def _verifier(**kw):
    from twisted.internet.task import Clock

    from msghub.auth import PasswordVerifier

    from fakes import ThreadJobs

    verifier = PasswordVerifier(Authenticator(USERS), Clock(), **kw)
    verifier.run_in_thread = jobs = ThreadJobs()
    return verifier, jobs


def _outcomes(d):
    got = []
    d.addCallback(got.append)
    return got


def test_verifier_runs_at_most_threads_checks_and_caches_the_result(scrypt_calls):
    verifier, jobs = _verifier(threads=2, per_peer=8)
    outcomes = [_outcomes(verifier.verify(basic(f"ops:wrong {i}".encode()), "a")) for i in range(5)]
    assert len(jobs.jobs) == 2
    while jobs.jobs:
        jobs.run_one()
    assert outcomes == [[None]] * 5 and verifier.checks == 5 and verifier.pending == 0
    assert not verifier.authenticator.needs_hashing(basic(b"ops:wrong 4"))


def test_verifier_shares_one_check_between_requests_with_the_same_header(scrypt_calls):
    verifier, jobs = _verifier(per_peer=1)
    header = basic(b"ops:wrong")
    first, second = _outcomes(verifier.verify(header, "a")), _outcomes(verifier.verify(header, "a"))
    jobs.run_one()
    assert first == second == [None] and len(scrypt_calls) == 1


def test_verifier_refuses_over_the_per_peer_budget_with_429_and_over_the_hub_budget_with_503():
    from msghub.auth import OVER_HUB, OVER_PEER

    verifier, jobs = _verifier(threads=1, per_peer=2, queue_max=3)
    for i in range(2):
        verifier.verify(basic(f"ops:wrong {i}".encode()), "a")
    assert _outcomes(verifier.verify(basic(b"ops:wrong x"), "a")) == [OVER_PEER]
    assert OVER_PEER[0] == 429 and OVER_PEER[2] == ((b"Retry-After", b"1"),)
    verifier.verify(basic(b"ops:wrong b"), "b")
    assert _outcomes(verifier.verify(basic(b"ops:wrong c"), "c")) == [OVER_HUB]
    assert OVER_HUB[0] == 503 and verifier.refused == 2


def test_verifier_gives_the_next_free_thread_to_the_next_peer_in_turn():
    verifier, jobs = _verifier(threads=1, per_peer=4)
    for i in range(4):
        verifier.verify(basic(f"ops:flood {i}".encode()), "attacker")
    newcomer = _outcomes(verifier.verify(basic("ops:ops pässword".encode()), "newcomer"))
    jobs.run_one()  # the attacker's first check, already running
    jobs.run_one()  # then the newcomer's, before the rest of the attacker's queue
    assert newcomer == [None]


def test_a_check_that_raises_answers_500_once_is_counted_and_caches_nothing(monkeypatch):
    from msghub.auth import CHECK_FAILED

    verifier, jobs = _verifier()

    def broken(header):
        raise RuntimeError("bug")

    monkeypatch.setattr(verifier.authenticator, "check", broken)
    header = basic(b"ops:whatever")
    outcome = _outcomes(verifier.verify(header, "a"))
    jobs.run_one()
    assert outcome == [CHECK_FAILED] and CHECK_FAILED[0] == 500
    assert verifier.errors == 1 and verifier.pending == 0 and not jobs.jobs
    assert verifier.authenticator.needs_hashing(header)


def test_a_started_verifier_still_runs_threads_checks_at_once():
    verifier, jobs = _verifier(threads=1)
    verifier.startService()  # Service sets its own "running": it must not count as a busy thread
    try:
        verifier.verify(basic(b"ops:wrong"), "a")
        assert len(jobs.jobs) == 1
    finally:
        verifier.stopService()
