"""One URL grammar for every store: what is accepted, what is refused, and what is shown.

Secrets (passwords, tokens) never appear in a store's ``url``, its repr, or
any error, whatever the URL looked like; URLs that would mean something
other than what they say are refused with one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers.secret_files import SECRET, secret_file
from stek import ConfigError, StekError, StoreUnavailable, open_store
from stek._command import reload_environment
from stek.cli import main as cli_main
from stek.stores.base import health_of
from stek.stores.etcd import EtcdStore
from stek.stores.redis import RedisStore
from stek.stores.url import parse, scrub

pytestmark = pytest.mark.usefixtures("no_kek_env")


@pytest.mark.parametrize("url", [
    "redis://stek:pa/ss@127.0.0.1:6379/0",
    "redis://:pa/ss@127.0.0.1:6379/0?prefix=x",
    "rediss://u:pa/ss@h:1/0?ssl_password=pa/ss&prefix=x",
    "etcds://u:pa/ss@h1:1,h2:2/p?password=pa/ss",
    "redis+sentinel://u:pa/ss@h1:1,h2:2/m/0?sentinel_password=pa/ss",
])
def test_scrub_removes_every_secret_even_unencoded(url: str) -> None:
    shown = scrub(url)
    assert "pa/ss" not in shown
    assert shown.split("://")[0] == url.split("://")[0]


#: One URL of every scheme stek opens; PW is where the password goes.
URLS = (
    "redis://{user}PW@127.0.0.1:1/0?prefix=p",
    "rediss://{user}PW@127.0.0.1:1/2",
    "unix://{user}PW@/tmp/stek-no.sock?db=1",
    "redis+sentinel://{user}PW@127.0.0.1:1,127.0.0.1:2/mymaster/0",
    "rediss+sentinel://{user}PW@127.0.0.1:1/mymaster/0",
    "etcd://{user}PW@127.0.0.1:1/fleet",
    "etcds://{user}PW@127.0.0.1:1,[::1]:1/fleet?cacert=/nonexistent",
    # Wrong in a way that makes an error name the URL.
    "redis://{user}PW@127.0.0.1:notaport/0",
    "redis://{user}PW@127.0.0.1:1/abc",
    "etcd://{user}PW@h:99999/p",
    "redis://{user}PW@127.0.0.1:1/0?colour=blue",
    "bogus://{user}PW@127.0.0.1/x",
)


def _seen(url: str) -> str:
    """All the text opening (and reading) ``url`` shows: scrub, errors, store.url, repr."""
    shown = [scrub(url)]
    try:
        store = open_store(url, insecure_plaintext=True)
    except StekError as exc:
        return "\n".join([*shown, str(exc)])
    shown += [store.url, repr(store)]
    if "sentinel" in url:
        return "\n".join(shown)  # redis-py retries each Sentinel for seconds: not per example
    try:
        store.read()  # nothing listens: the store's own error text
    except StekError as exc:
        shown.append(str(exc))
    finally:
        store.close()
    return "\n".join(shown)


def _pieces(secret: str) -> set[str]:
    """The secret and every 4-character piece of it (longer pieces contain one)."""
    return {secret, *(secret[i:i + 4] for i in range(len(secret) - 3))}


def _leaked(secret: str, text: str, baseline: str) -> set[str]:
    """Pieces of ``secret`` in ``text`` that are not in the same text for a dull password."""
    return {p for p in _pieces(secret) if p in text and p not in baseline}


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                        min_size=4, max_size=24),
       template=st.sampled_from(URLS), user=st.sampled_from(["stek:", ":"]),
       encoded=st.booleans())
@example(password="pa/ss", template=URLS[0], user=":", encoded=False)
@example(password="pa?ss", template=URLS[0], user="u:", encoded=False)
@example(password="pa#s@s:w/d", template=URLS[5], user="stek:", encoded=False)
def test_no_password_piece_is_ever_shown_or_passed_on(password: str, template: str,
                                                      user: str, encoded: bool) -> None:
    """Whatever printable password, written as typed or percent-encoded, in any
    scheme: scrub(), every error, store.url and the reload environment hold no
    piece of it.  The userinfo is everything before the last "@"."""
    if "etcd" in template and user == ":":
        user = "stek:"  # etcd: a password needs a user (refused otherwise, also fine)
    placed = quote(password, safe="") if encoded else password
    url = template.format(user=user).replace("PW", placed)
    dull = template.format(user=user).replace("PW", "x")
    assert not _leaked(password, _seen(url), _seen(dull)), url
    env = {"STEK_STORE": url, "REDIS_PW": password, "STEK_HARMLESS": "kept"}
    passed = reload_environment(env, [url])
    text = "\n".join(f"{k}={v}" for k, v in passed.items())
    assert not _leaked(password, text, "STEK_HARMLESS=kept"), (url, passed)
    assert passed == {"STEK_HARMLESS": "kept"} or "kept" in password


def test_an_at_sign_after_the_hosts_is_written_percent_40(tmp_path: Path) -> None:
    """Everything before the last "@" is the userinfo, so an option's "@" is %40
    (a systemd template unit's credentials directory, say)."""
    (tmp_path / "stek@eu.service").mkdir()
    pw = secret_file(tmp_path / "stek@eu.service")
    u = parse(f"redis://stek:{SECRET}@127.0.0.1:1/0?prefix=team%40eu")
    assert u.hosts == (("127.0.0.1", 1),) and u.user == "stek" and u.password == SECRET
    assert u.options["prefix"] == "team@eu"
    u = parse(f"redis://stek@127.0.0.1:1/0?password_file={str(pw).replace('@', '%40')}")
    assert u.password == SECRET and u.options["password_file"] == str(pw)


def test_secret_in_the_query_string_is_refused_without_echoing_it(kek_file: Path) -> None:
    for url in ("redis://127.0.0.1:1/0?password=hunter22",
                "rediss://127.0.0.1:1/0?ssl_password=hunter22",
                "redis+sentinel://127.0.0.1:1/m/0?sentinel_password=hunter22",
                "etcds://127.0.0.1:1/p?user=u&password=hunter22"):
        with pytest.raises(ConfigError, match="_file=PATH") as info:
            open_store(url, kek_file=str(kek_file))
        assert "hunter22" not in str(info.value)


def test_password_from_file_or_environment_never_shown(kek_file: Path, tmp_path: Path) -> None:
    pw = secret_file(tmp_path)
    store = open_store(f"redis://stek@127.0.0.1:1/0?prefix=p&password_file={pw}",
                       kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    assert store._parsed is not None and store._parsed.url.password == SECRET
    assert SECRET not in store.url and SECRET not in repr(store)
    assert store.url == f"redis://stek@127.0.0.1:1/0?password_file={pw}&prefix=p"
    with pytest.raises(StoreUnavailable) as info:
        store.read()  # nothing listens on port 1
    assert SECRET not in str(info.value)
    env = {"STEK_STORE_PASSWORD": SECRET}
    u = parse("etcds://h:1/p?user=stek", env)
    assert u.password == SECRET and u.user == "stek"
    assert SECRET not in u.display and SECRET not in repr(u)


def test_bad_url_error_does_not_leak_a_password_with_a_slash(kek_file: Path) -> None:
    for url in ("redis://stek:pa/ss@127.0.0.1:notaport/0", "redis://stek:pa/ss@h:1/abc",
                "etcd://u:pa/ss@h:99999/p", "bogus://u:pa/ss@h/x"):
        with pytest.raises(ConfigError) as info:
            open_store(url, kek_file=str(kek_file))
        assert "pa/ss" not in str(info.value) and "ss@" not in str(info.value)


def test_cli_error_does_not_leak_a_password_with_a_question_mark(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The "?" is the password's, not the start of the options."""
    assert cli_main(["status", "--store", "redis://u:pa?ss@127.0.0.1:notaport/0"]) == 2
    err = capsys.readouterr().err
    assert "pa?ss" not in err and "ss@" not in err and "redis://u@127.0.0.1" in err, err


def test_urls_that_mean_something_else_are_refused(kek_file: Path) -> None:
    for url, match in (("", "empty store URL"), ("   ", "empty store URL"),
                       ("file:", "no path"), ("file://", "no path"),
                       ("redis://127.0.0.1:1/abc", "must be a number"),
                       ("redis://127.0.0.1:1/0/1", "the path is /DB"),
                       ("redis://127.0.0.1:1/1?db=2", "two databases"),
                       ("redis://h1:1,h2:2/0", "one host"),
                       ("redis://127.0.0.1:1/0?colour=blue", "unknown option"),
                       ("etcd://127.0.0.1:1/p?cacert=/x", "TLS options on a plaintext"),
                       ("etcd://127.0.0.1:1/p?timeout=3", "unknown option"),
                       ("etcds://127.0.0.1:1/p?user=u", "needs a password"),
                       ("etcds://127.0.0.1:1/p?cert=/a", "both cert= and key="),
                       ("etcds://127.0.0.1:1/p?cacert=/nonexistent", "cannot read the cacert="),
                       ("etcds://127.0.0.1:1/p?cert=/no/c&key=/no/k", "cannot read the cert="),
                       ("redis+sentinel://127.0.0.1:1", "MASTER/DB")):
        with pytest.raises(ConfigError, match=match):
            open_store(url, kek_file=str(kek_file))


def test_empty_stek_store_is_refused_not_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_store() (and install()) with STEK_STORE= set but empty: an error, as "" is."""
    for value in ("", "  "):
        monkeypatch.setenv("STEK_STORE", value)
        with pytest.raises(ConfigError, match="STEK_STORE is set but empty"):
            open_store()


def test_cli_refuses_an_empty_store_url(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("", "file:"):
        code = cli_main(["status", "--store", url])
        assert code in (1, 2)
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err


def test_several_etcd_members_and_identity(kek_file: Path) -> None:
    store = open_store("etcd://h1:2379,h2,[::1]:2381/fleet/a/", kek_file=str(kek_file))
    assert isinstance(store, EtcdStore)
    assert store._m.names == ["h1:2379", "h2:2379", "::1:2381"]
    assert store.url == "etcd://h1:2379,h2,[::1]:2381/fleet/a"
    assert store.identity == "etcd:/fleet/a/keyring"
    r = open_store("rediss://127.0.0.1:1/3?prefix=q", kek_file=str(kek_file))
    s = open_store("redis+sentinel://h1,h2/mymaster/3?prefix=q", kek_file=str(kek_file))
    assert isinstance(r, RedisStore) and isinstance(s, RedisStore)
    assert r.identity == s.identity == "redis:3/q"  # where it lives, not how it is reached


def test_kek_file_may_be_named_in_the_url(kek_file: Path) -> None:
    store = open_store(f"etcd://127.0.0.1:1/p?kek_file={kek_file}")
    assert getattr(store, "sealer").sealed


def test_missing_extra_names_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                             kek_file: Path) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "etcd3gw", None)
    with pytest.raises(ConfigError, match=r"pip install 'stek\[redis\]'"):
        open_store("redis://127.0.0.1:1/0", kek_file=str(kek_file))
    with pytest.raises(ConfigError, match=r"pip install 'stek\[etcd\]'"):
        open_store("etcd://127.0.0.1:1/p", kek_file=str(kek_file))


def test_local_store_health() -> None:
    h = health_of(open_store("memory:"))
    assert h.engine == "memory" and h.endpoints[0].reachable
