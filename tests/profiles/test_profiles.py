"""Shipped provider profiles: every one loads, every fact has provenance, values are in range; bad profile data
is a clear `ConfigurationError`; `build_provider` fills placeholders and lets every field be overridden."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from grantkeeper import ConfigurationError, Provider, RotationMode, Secret
from grantkeeper.model import AuthMethod
from grantkeeper.profiles import FACTS, QUIRKS, UNVERIFIED, build_provider, get_profile, load_profiles, parse_profiles

PROFILES = load_profiles()
NAMES = sorted(PROFILES)
PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")

MINIMAL = """
[acme]
title = "Acme"
token_url = "https://auth.acme.example/token"
rotation = "always"
auth_methods = ["client_secret_basic"]
[acme.sources]
s1 = "https://docs.acme.example/oauth"
[acme.facts]
token_url = ["s1"]
rotation = ["s1"]
auth_methods = "unverified"
"""


def stated(text: str, line: str) -> str:
    """`text` with one more fact, cited from source s1."""
    key = line.split(" = ", maxsplit=1)[0]
    return text.replace('title = "Acme"', f'title = "Acme"\n{line}').replace(
        "[acme.facts]", f'[acme.facts]\n{key} = ["s1"]'
    )


def sample_params(name: str) -> dict[str, str]:
    """A value for every placeholder the profile needs and does not default."""
    profile = PROFILES[name]
    needed = set(profile.placeholders()) - set(profile.param_defaults or {})
    return {key: ("https://sso.example.com" if profile.token_url.startswith("{" + key) else "example-1")
            for key in needed}  # fmt: skip


class TestShippedProfiles:
    def test_at_least_25_real_providers(self) -> None:
        assert len(PROFILES) >= 25

    @pytest.mark.parametrize("name", NAMES)
    def test_every_stated_fact_has_provenance(self, name: str) -> None:
        """Each fact is backed by cited sources or marked unverified; at least one fact is sourced."""
        profile = PROFILES[name]
        data = profile.as_dict()
        stated = {key for key in FACTS if key in data}
        assert stated == set(profile.facts)
        sourced = [where for where in profile.facts.values() if where != UNVERIFIED]
        assert sourced, f"{name} has no sourced fact"
        assert all(set(where) <= set(profile.sources) for where in sourced)

    @pytest.mark.parametrize("name", NAMES)
    def test_urls_are_https(self, name: str) -> None:
        profile = PROFILES[name]
        for url in profile.sources.values():
            assert urlsplit(url).scheme == "https"
        for url in filter(None, (profile.token_url, profile.authorization_url, profile.issuer)):
            if not url.startswith("{"):
                assert urlsplit(url).scheme == "https"

    @pytest.mark.parametrize("name", NAMES)
    def test_values_in_range(self, name: str) -> None:
        profile = PROFILES[name]
        assert profile.rotation in ("always", "conditional", "never", "configurable")
        assert profile.auth_methods and all(isinstance(m, AuthMethod) for m in profile.auth_methods)
        assert set(profile.quirks) <= set(QUIRKS)
        if profile.reuse_grace is not None:
            assert 0 <= profile.reuse_grace <= 31 * 86400
        if profile.access_token_ttl is not None:
            assert 60 <= profile.access_token_ttl <= 90 * 86400
        for days in (profile.refresh_idle_ttl_days, profile.refresh_absolute_ttl_days):
            assert days is None or 1 <= days <= 3660
        if profile.refresh_idle_ttl_days and profile.refresh_absolute_ttl_days:
            assert profile.refresh_idle_ttl_days <= profile.refresh_absolute_ttl_days

    @pytest.mark.parametrize("name", NAMES)
    def test_unverified_rotation_is_never_assumed_static(self, name: str) -> None:
        """'never' lets grantkeeper re-send a token after an ambiguous outcome: only a source may claim it."""
        profile = PROFILES[name]
        if profile.facts["rotation"] == UNVERIFIED:
            assert profile.rotation != "never"

    @pytest.mark.parametrize("name", NAMES)
    def test_placeholders_are_well_formed_and_described(self, name: str) -> None:
        profile = PROFILES[name]
        for url in filter(None, (profile.token_url, profile.authorization_url, profile.issuer)):
            assert "{" not in PLACEHOLDER.sub("", url) and "}" not in PLACEHOLDER.sub("", url)
        assert set(profile.placeholders()) == set(profile.params or {})

    @pytest.mark.parametrize("name", NAMES)
    def test_builds_a_valid_provider(self, name: str) -> None:
        """With its placeholders filled, every profile yields a provider whose token URL has no braces left."""
        provider = build_provider(PROFILES[name], "p", client_id="client", params=sample_params(name))
        assert "{" not in provider.token_url
        assert provider.profile == name
        assert provider.auth_method is PROFILES[name].auth_methods[0]


class TestBuildProvider:
    def test_profile_values_become_provider_fields(self) -> None:
        provider = build_provider(get_profile("atlassian"), "jira", client_id="c", client_secret=Secret("s"))
        assert (provider.token_url, provider.rotation, provider.reuse_grace) == (
            "https://auth.atlassian.com/oauth/token", RotationMode.ALWAYS, 600.0)  # fmt: skip
        assert (provider.refresh_idle_ttl, provider.refresh_absolute_ttl) == (90 * 86400.0, 365 * 86400.0)
        assert provider.default_expires_in == 3600.0

    def test_every_field_can_be_overridden(self) -> None:
        provider = build_provider(
            get_profile("xero"), "x", client_id="c", client_secret_env="XERO_SECRET",
            auth_method=AuthMethod.CLIENT_SECRET_BASIC, rotation=RotationMode.NEVER, reuse_grace=5.0, skew=10.0,
            default_expires_in=60.0, refresh_idle_ttl=86400.0, refresh_absolute_ttl=2 * 86400.0, send_scope=True,
            token_url="https://identity.example.com/token",
        )  # fmt: skip
        assert (provider.auth_method, provider.rotation, provider.reuse_grace, provider.skew) == (
            AuthMethod.CLIENT_SECRET_BASIC, RotationMode.NEVER, 5.0, 10.0)  # fmt: skip
        assert (provider.default_expires_in, provider.refresh_idle_ttl, provider.refresh_absolute_ttl) == (
            60.0, 86400.0, 2 * 86400.0)  # fmt: skip
        assert provider.send_scope and provider.token_url == "https://identity.example.com/token"

    def test_configurable_rotation_is_run_as_always(self) -> None:
        assert build_provider(get_profile("okta"), "o", client_id="c",
                              params={"okta_domain": "dev-1.okta.com"}).rotation is RotationMode.ALWAYS  # fmt: skip

    def test_tenant_placeholder_and_default(self) -> None:
        profile = get_profile("microsoft_entra")
        default = build_provider(profile, "m", client_id="c")
        tenant = build_provider(profile, "m", client_id="c", params={"tenant": "contoso.onmicrosoft.com"})
        assert default.token_url == "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
        assert tenant.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"

    def test_url_placeholder_takes_a_url(self) -> None:
        provider = build_provider(get_profile("keycloak"), "k", client_id="c",
                                  params={"server": "https://sso.example.com/", "realm": "acme"})  # fmt: skip
        assert provider.token_url == "https://sso.example.com/realms/acme/protocol/openid-connect/token"

    def test_issuer_audience_for_private_key_jwt(self) -> None:
        provider = build_provider(get_profile("auth0"), "a", client_id="c", params={"auth0_domain": "t.auth0.com"},
                                  auth_method=AuthMethod.PRIVATE_KEY_JWT, private_key_file="/k.pem")  # fmt: skip
        assert provider.jwt_audience == "https://t.auth0.com/"

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({}, "needs --param okta_domain"),
            ({"okta_domain": "evil.example.com/x?y"}, "is not valid here"),
            ({"okta_domain": "a.okta.com", "tenant": "x"}, "has no parameter 'tenant'"),
        ],
    )
    def test_bad_params_are_configuration_errors(self, params: dict[str, str], message: str) -> None:
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            build_provider(get_profile("okta"), "o", client_id="c", params=params)

    def test_unknown_profile(self) -> None:
        with pytest.raises(ConfigurationError, match="provider profiles"):
            get_profile("nonesuch")

    def test_result_is_a_provider(self) -> None:
        assert isinstance(build_provider(get_profile("google"), "g", client_id="c"), Provider)


class TestBadProfileData:
    """Profile data that breaks a rule is refused with the profile and key named."""

    def test_minimal_profile_parses(self) -> None:
        profile = parse_profiles(MINIMAL, origin="t.toml")["acme"]
        assert profile.unverified() == ("auth_methods",)

    @pytest.mark.parametrize(
        ("edit", "message"),
        [
            (lambda t: t.replace('rotation = "always"', 'rotation = "sometimes"'), "rotation must be one of"),
            (lambda t: t.replace('["client_secret_basic"]', '["magic"]'), "auth_methods must name methods"),
            (lambda t: t.replace('rotation = ["s1"]\n', ""), "rotation has no provenance"),
            (lambda t: t.replace('rotation = ["s1"]', 'rotation = ["s9"]'), "cites 's9'"),
            (lambda t: t.replace('https://docs.acme.example/oauth', 'http://docs.acme.example/oauth'),
             "must be an https URL"),
            (lambda t: t.replace('token_url = "https://auth.acme.example/token"',
                                 'token_url = "https://{tenant.auth.acme.example/token"'), "malformed placeholder"),
            (lambda t: t.replace('token_url = "https://auth.acme.example/token"',
                                 'token_url = "https://{tenant}.acme.example/token"'), "must describe placeholder"),
            (lambda t: t.replace('token_url = "https://auth.acme.example/token"',
                                 'token_url = "http://auth.acme.example/token"'), "URLs must be https"),
            (lambda t: stated(t, "reuse_grace = -1"), "reuse_grace must be a number"),
            (lambda t: stated(t, "access_token_ttl = 1e12"), "access_token_ttl must be a number"),
            (lambda t: stated(t, 'quirks = ["haunted"]'), "unknown quirk 'haunted'"),
            (lambda t: stated(t, 'jwt_audience = "issuer"'), "the profile has no issuer"),
            (lambda t: t.replace('title = "Acme"', 'title = "Acme"\ncolour = "red"'), "colour is not a profile key"),
            (lambda t: t.replace('[acme.facts]', '[acme.facts]\nissuer = ["s1"]'), "does not state"),
            (lambda t: t.replace("[acme]", "[acme]\n[acme.x]"), "x is not a profile key"),
            (lambda t: t + "[", "is not valid TOML"),
        ],
    )  # fmt: skip
    def test_rule_violations(self, edit: object, message: str) -> None:
        text = edit(MINIMAL)  # type: ignore[operator]
        with pytest.raises(ConfigurationError, match=re.escape(message)):
            parse_profiles(text, origin="t.toml")

    def test_uncited_source(self) -> None:
        text = MINIMAL.replace('s1 = "https://docs.acme.example/oauth"',
                               's1 = "https://docs.acme.example/oauth"\ns2 = "https://x.example/"')  # fmt: skip
        with pytest.raises(ConfigurationError, match=r"sources\.s2 is cited by no fact"):
            parse_profiles(text, origin="t.toml")
