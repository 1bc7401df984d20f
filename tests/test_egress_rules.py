"""The allowlist proxy's rules, policy checks of egress fields and env_passthrough,
and the engine-version side of the DNS-leak finding: pure functions, no engine."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cbox.egress_rules import Allowlist, dangerous, split_target
from cbox.errors import ConfigError
from cbox.orchestrator.dnsprobe import engine_affected
from cbox.policies import PolicySet, passthrough_problem


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("example.com:443", ("example.com", 443)),
        ("Example.COM.:443", ("example.com", 443)),
        ("[::1]:8443", ("::1", 8443)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("example.com", None),
        ("example.com:", None),
        ("example.com:0", None),
        ("example.com:65536", None),
        ("example.com:+443", None),
        ("example.com:٤٤٣", None),
        ("::1:443", None),
        ("[example.com]:443", None),
        ("[::1]443", None),
        ("user@example.com:443", None),
        ("exa mple.com:443", None),
        ("-bad.com:443", None),
        ("http://example.com:443", None),
    ],
)
def test_split_target_is_strict(target: str, parsed: tuple[str, int] | None) -> None:
    assert split_target(target) == parsed


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::", "10.0.0.1", "172.16.0.1",
        "192.168.1.1", "100.64.0.1", "169.254.169.254", "fe80::1", "fd00:ec2::254",
        "fc00::1", "224.0.0.1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1", "255.255.255.255",
    ],
)
def test_inside_addresses_are_dangerous(address: str) -> None:
    assert dangerous(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_not(address: str) -> None:
    assert dangerous(ipaddress.ip_address(address)) is None


def test_listing_is_literal_and_wildcards_match_names_only() -> None:
    rules = Allowlist.parse(["127.0.0.1", "10.1.0.0/16", "*.example.com", "api.test"], [443])
    loop = ipaddress.ip_address("127.0.0.1")
    assert rules.address_refusal(loop) is None
    assert rules.address_refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert "IPv4-mapped" in (rules.address_refusal(ipaddress.ip_address("::ffff:127.0.0.1")) or "")
    assert rules.address_refusal(ipaddress.ip_address("10.2.0.1")) is not None
    assert rules.name_allowed("a.example.com") and rules.name_allowed("a.b.example.com")
    assert not rules.name_allowed("example.com")
    assert not rules.name_allowed("evilexample.com")
    assert rules.name_allowed("api.test") and not rules.name_allowed("x.api.test")
    assert rules.port_allowed(443) and not rules.port_allowed(80)


def test_port_ranges() -> None:
    rules = Allowlist.parse(["x.test"], [443, "8000-8100"])
    assert rules.port_allowed(8000) and rules.port_allowed(8100) and rules.port_allowed(443)
    assert not rules.port_allowed(8101) and not rules.port_allowed(22)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('allow_hosts = ["https://example.com"]', "allow_hosts"),
        ('allow_hosts = ["example.com:443"]', "allow_hosts"),
        ('allow_hosts = ["*"]', "allow_hosts"),
        ('allow_hosts = ["10.0.0.1/8"]', "allow_hosts"),
        ('allow_hosts = ["x.test"]\nallow_ports = [0]', "allow_ports"),
        ('allow_hosts = ["x.test"]\nallow_ports = ["90-80"]', "allow_ports"),
        ('allow_hosts = ["x.test"]\nallow_ports = ["http"]', "allow_ports"),
    ],
)
def test_bad_egress_fields_stop_loading(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "p.toml").write_text('network = "allowlist"\n' + text + "\n")
    with pytest.raises(ConfigError, match=f"p.toml: field {needle}"):
        PolicySet.load(tmp_path)


def test_allow_ports_default_to_443() -> None:
    from cbox.policies import Policy

    assert Policy().allow_ports == [443]


@pytest.mark.parametrize(
    ("name", "environ", "problem"),
    [
        ("ANTHROPIC_API_KEY", {}, "credential variable"),
        ("claude_code_oauth_token", {}, "credential variable"),
        ("CBOX_ANYTHING", {}, "credential variable"),
        ("GITHUB_TOKEN", {}, "credential variable"),
        # Families nobody listed by name are kept out by their shape.
        ("ANTHROPIC_CUSTOM_HEADERS", {}, "credential variable"),
        ("AWS_BEARER_TOKEN_BEDROCK", {}, "credential variable"),
        ("GEMINI_API_KEY", {}, "credential variable"),
        ("HF_TOKEN", {}, "credential variable"),
        ("MY_CLIENT_SECRET_X", {}, "credential variable"),
        ("DB_PASSWORD", {}, "credential variable"),
        ("COPY", {"COPY": "sk-real-secret"}, "holds one of the server's credentials"),
        ("WRAP", {"WRAP": "x=sk-real-secret;"}, "holds one of the server's credentials"),
        ("FINE", {"FINE": "hello"}, None),
        ("UNSET", {}, None),
    ],
)
def test_passthrough_problems(name: str, environ: dict[str, str], problem: str | None) -> None:
    found = passthrough_problem(name, environ, ["sk-real-secret"])
    assert (found is None) if problem is None else (problem in (found or ""))


def test_passthrough_is_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "leaky.toml").write_text('env_passthrough = ["TOKEN_COPY"]\n')
    PolicySet.load(tmp_path)  # no environment given: only names are checked
    with pytest.raises(ConfigError, match=r"leaky\.toml: field env_passthrough: the value "
                       r"of TOKEN_COPY"):
        PolicySet.load(tmp_path, environ={"TOKEN_COPY": "abcdefgh12"}, secrets=["abcdefgh12"])


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("20.10.24+dfsg1", True), ("23.0.10", True), ("23.0.11", False), ("24.0.9", True),
        ("25.0.4", True), ("25.0.5", False), ("26.0.0-rc2", True), ("26.0.0-rc3", False),
        ("26.0.0", False), ("27.3.1", False), ("nonsense", None),
    ],
)
def test_engine_versions_of_the_advisory(version: str, affected: bool | None) -> None:
    assert engine_affected(version) is affected


@pytest.mark.parametrize("address", [
    "::7f00:1", "::a9fe:a9fe", "::ffff:0:7f00:1", "64:ff9b:1::7f00:1", "fec0::1",
])
def test_ipv6_forms_that_carry_a_local_address_are_refused(address: str) -> None:
    assert dangerous(ipaddress.ip_address(address)) is not None
