"""``stek agent``'s options are read by the CLI (stek.cli.agent), whose messages name
them; the library (stek.agent) refuses what breaks its own rules in its own terms."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stek.agent import Agent, MetricsServer, Target, TargetSpec, build_targets
from stek.cli.agent import parse_export, parse_metrics_addr
from stek.errors import ConfigError
from stek.stores.memory import MemoryStore


def test_parse_export_gives_a_target_spec() -> None:
    spec = parse_export("haproxy:/run/h.keys", haproxy_sockets=["/s/a", "/s/b"], scope="edge")
    assert spec == TargetSpec("haproxy", Path("/run/h.keys"), (),
                              (Path("/s/a"), Path("/s/b")), "edge")
    assert parse_export("nginx:/n", reloads=["nginx -s reload"]).reloads == ("nginx -s reload",)


@pytest.mark.parametrize(("args", "message"), [
    (("nginx",), "--export 'nginx': use FORMAT:PATH"),
    (("lighttpd:/a",), "--export 'lighttpd:/a': unknown format 'lighttpd'"),
    (("nginx:/a", (), ["/s"]), "--haproxy-socket follows --export 'nginx:/a'"),
    (("haproxy:/a", ["x"], ["/s"]), "give either --reload or --haproxy-socket"),
    (("nginx:/a", [" "]), "empty --reload command"),
    (("nginx:/a", ["x", "x"]), "the same --reload twice"),
    (("haproxy:/a", (), ["/s", "/s"]), "the same --haproxy-socket twice"),
    (("nginx:/a", (), (), "no/slash"), "--export 'nginx:/a' --scope 'no/slash': a scope is"),
])
def test_parse_export_names_the_options(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_export(*args)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_parse_metrics_addr() -> None:
    assert parse_metrics_addr("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_metrics_addr("[::1]:80") == ("::1", 80)
    assert parse_metrics_addr("0.0.0.0:80", public=True) == ("0.0.0.0", 80)
    with pytest.raises(ConfigError, match="--metrics-addr 'nowhere': use HOST:PORT"):
        parse_metrics_addr("nowhere")
    with pytest.raises(ConfigError, match=re.escape("--metrics-addr '127.0.0.1:70000': port out")):
        parse_metrics_addr("127.0.0.1:70000")
    with pytest.raises(ConfigError, match="add --metrics-public to serve them there"):
        parse_metrics_addr("0.0.0.0:80")


def test_library_refusals_are_in_its_own_terms(tmp_path: Path) -> None:
    """A library caller typed no option: each message names what it passed (an option
    appears only as a hint, in parentheses)."""
    with pytest.raises(ConfigError, match=r"public=True \(--metrics-public\)") as info:
        MetricsServer(Agent(MemoryStore()), "0.0.0.0", 0)
    assert not str(info.value).startswith("--")
    missing = tmp_path / "missing" / "dir"
    said = f"target nginx:{missing}/n: {missing} does not exist"
    with pytest.raises(ConfigError, match=re.escape(said)):
        build_targets([TargetSpec("nginx", missing / "n")])
    with pytest.raises(ConfigError, match="target nginx:/a: scope 'no/slash': a scope is"):
        Target(TargetSpec("nginx", Path("/a"), scope="no/slash"))
