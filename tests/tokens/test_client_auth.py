"""Client authentication against the simulator's token endpoint over loopback: client_secret_basic (RFC 6749
§2.3.1 encoding), client_secret_post, private_key_jwt (RFC 7523, RS256 and ES256) and none. Wrong credentials or
a method the server does not allow are answered ``invalid_client`` and reported as `ClientAuthFailed`, with the
grant untouched."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from grantkeeper import ClientAuthFailed, ConfigurationError, GrantState, Keeper, Provider, Secret
from grantkeeper.model import AuthMethod
from grantkeeper.tokens.assertion import ASSERTION_LIFETIME, client_assertion
from grantkeeper.tokens.request import build_refresh_request
from tests.helpers import FAST_POLICY
from tests.signing_keys import key_file, public_pem

Sim = Any
TRICKY = [
    ("client:with:colons", "secret:with:colons"),
    ("client%41percent", "secret%2Fpercent%"),
    ("client+plus", "secret+plus+"),
    ("client with spaces", "secret with spaces "),
    ("clïent-ünïcode-日本", "sécret-ü-日本-🔑"),
    ("a:b%c+d e/é", "&=?#:%+ é"),
]


def refresh_with(sim: Sim, provider: Provider) -> tuple[Keeper, int]:
    """Import a fresh grant for `provider` into a memory store and refresh it once; returns the new generation."""
    keeper = Keeper.open("memory://", policy=FAST_POLICY)
    keeper.add_provider(provider)
    keeper.import_grant("g", provider=provider.name, refresh_token=sim.issue_grant())
    return keeper, keeper.refresh("g", force=True).generation


def assert_rejected(sim: Sim, provider: Provider) -> None:
    keeper = Keeper.open("memory://", policy=FAST_POLICY)
    with keeper:
        keeper.add_provider(provider)
        keeper.import_grant("g", provider=provider.name, refresh_token=sim.issue_grant())
        with pytest.raises(ClientAuthFailed) as caught:
            keeper.refresh("g", force=True)
        grant = keeper.store.get_grant("g")
    assert caught.value.oauth_error == "invalid_client"
    assert (grant.generation, grant.state) == (1, GrantState.ACTIVE)
    assert sim.stats.errors.get("invalid_client") == 1


def secret_provider(
    sim: Sim, method: AuthMethod, *, client_id: str | None = None, secret: str | None = None
) -> Provider:
    return Provider(
        name="p", token_url=sim.url, client_id=client_id or sim.client_id, auth_method=method,
        client_secret=Secret(secret if secret is not None else sim.client_secret),
    )  # fmt: skip


def jwt_provider(sim: Sim, kind: str = "rsa", **options: Any) -> Provider:
    options.setdefault("private_key_file", key_file(kind))
    return Provider(name="p", token_url=sim.url, client_id=sim.client_id, auth_method=AuthMethod.PRIVATE_KEY_JWT,
                    **options)  # fmt: skip


def decode(segment: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


SECRET_METHODS = [AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST]
OTHER = {AuthMethod.CLIENT_SECRET_BASIC: "client_secret_post", AuthMethod.CLIENT_SECRET_POST: "client_secret_basic"}


@pytest.mark.parametrize("method", SECRET_METHODS, ids=lambda m: m.value)
class TestClientSecrets:
    @pytest.mark.parametrize(("client_id", "secret"), TRICKY)
    def test_reserved_and_non_ascii_credentials_authenticate(self, make_sim: Callable[..., Sim], method: AuthMethod,
                                                             client_id: str, secret: str) -> None:  # fmt: skip
        """Basic form-encodes id and secret before Base64 and post sends them as form fields: either way the
        server decodes exactly what was configured."""
        sim = make_sim(client_id=client_id, client_secret=secret, auth_methods=(method.value,))
        keeper, generation = refresh_with(sim, secret_provider(sim, method))
        keeper.close()
        assert generation == 2
        assert sim.stats.successes == 1

    @pytest.mark.parametrize("wrong", ["secret", "client_id"])
    def test_wrong_credentials_are_client_auth_failed(self, make_sim: Callable[..., Sim], method: AuthMethod,
                                                      wrong: str) -> None:  # fmt: skip
        sim = make_sim(auth_methods=(method.value,))
        assert_rejected(sim, secret_provider(sim, method, **{wrong: "not-the-right-one"}))

    def test_refused_where_only_the_other_method_is_allowed(self, make_sim: Callable[..., Sim],
                                                            method: AuthMethod) -> None:  # fmt: skip
        sim = make_sim(auth_methods=(OTHER[method],))
        assert_rejected(sim, secret_provider(sim, method))


def test_unencoded_basic_pair_is_rejected_by_the_server(make_sim: Callable[..., Sim]) -> None:
    """The simulator really decodes per §2.3.1: a raw "id:secret" with reserved characters fails."""
    sim = make_sim(client_id="id+1", client_secret="s%41", auth_methods=("client_secret_basic",))
    raw = base64.b64encode(b"id+1:s%41").decode()
    response = httpx.post(sim.url, data={"grant_type": "refresh_token", "refresh_token": sim.issue_grant()},
                          headers={"Authorization": f"Basic {raw}"})  # fmt: skip
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


class TestNone:
    def test_public_client_sends_only_its_id(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(client_id="public app", auth_methods=("none",))
        provider = Provider(name="p", token_url=sim.url, client_id="public app", auth_method=AuthMethod.NONE)
        keeper, generation = refresh_with(sim, provider)
        keeper.close()
        assert generation == 2

    def test_public_client_refused_by_a_confidential_only_server(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("client_secret_basic", "client_secret_post"))
        assert_rejected(sim, Provider(name="p", token_url=sim.url, client_id=sim.client_id,
                                      auth_method=AuthMethod.NONE))  # fmt: skip


class TestPrivateKeyJwt:
    @pytest.mark.parametrize("kind", ["rsa", "ec"])
    def test_signed_assertion_authenticates_every_refresh(self, make_sim: Callable[..., Sim], kind: str) -> None:
        """RS256 and ES256 both verify; the second refresh succeeds too, so each assertion has a fresh jti (the
        simulator refuses a jti it has seen)."""
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem(kind))
        keeper, _ = refresh_with(sim, jwt_provider(sim, kind))
        with keeper:
            assert keeper.refresh("g", force=True).generation == 3
        assert sim.stats.successes == 2

    def test_assertion_never_logged(self, make_sim: Callable[..., Sim], caplog: pytest.LogCaptureFixture) -> None:
        """Not at any level, from any logger (httpx and httpcore included)."""
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("rsa"))
        with caplog.at_level(logging.DEBUG):
            keeper, _ = refresh_with(sim, jwt_provider(sim))
            keeper.close()
        assert caplog.records  # the capture worked: httpx logs every request at DEBUG
        assert "eyJhbGciOi" not in caplog.text  # base64url of '{"alg":', how every assertion starts

    def test_issuer_audience_is_accepted(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("ec"))
        keeper, generation = refresh_with(sim, jwt_provider(sim, "ec", jwt_audience=sim.base_url))
        keeper.close()
        assert generation == 2

    def test_foreign_audience_is_client_auth_failed(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("rsa"))
        assert_rejected(sim, jwt_provider(sim, jwt_audience="https://elsewhere.example.com"))

    def test_key_the_server_does_not_know_is_client_auth_failed(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("ec"))
        assert_rejected(sim, jwt_provider(sim, "rsa"))

    def test_jwt_refused_where_only_secrets_are_allowed(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("client_secret_basic",))
        assert_rejected(sim, jwt_provider(sim))

    def test_replayed_assertion_is_refused(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("rsa"))
        request = build_refresh_request(jwt_provider(sim), Secret(sim.issue_grant()))
        form = dict(httpx.QueryParams(request.content.decode()))
        form["refresh_token"] = sim.issue_grant()
        first = httpx.post(sim.url, data=form)
        form["refresh_token"] = sim.issue_grant()
        second = httpx.post(sim.url, data=form)
        assert first.status_code == 200
        assert (second.status_code, second.json()["error"]) == (401, "invalid_client")
        assert "jti" in second.json()["error_description"]

    def test_expired_assertion_is_refused(self, make_sim: Callable[..., Sim]) -> None:
        import time

        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("rsa"))
        provider = jwt_provider(sim)
        stale = build_refresh_request(provider, Secret(sim.issue_grant()), now=time.time() - 10 * ASSERTION_LIFETIME)
        with httpx.Client() as client:
            response = client.send(stale)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")

    def test_assertion_claims(self, make_sim: Callable[..., Sim]) -> None:
        """iss = sub = client id, aud = token endpoint, a short exp, a kid when configured, a new jti each time."""
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("ec"))
        provider = jwt_provider(sim, "ec", key_id="key-2026")
        first, second = (client_assertion(provider, now=1_800_000_000.0) for _ in range(2))
        header, claims = decode(first.split(".")[0]), decode(first.split(".")[1])
        assert header == {"alg": "ES256", "typ": "JWT", "kid": "key-2026"}
        assert (claims["iss"], claims["sub"], claims["aud"]) == (sim.client_id, sim.client_id, sim.url)
        assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME
        assert claims["jti"] != decode(second.split(".")[1])["jti"]


class TestBadKeys:
    """A key grantkeeper cannot use is a configuration error naming the file, before anything is sent."""

    def check(self, make_sim: Callable[..., Sim], path: Path, expected: str) -> None:
        sim = make_sim(auth_methods=("private_key_jwt",), client_public_key=public_pem("rsa"))
        keeper = Keeper.open("memory://", policy=FAST_POLICY)
        with keeper:
            keeper.add_provider(jwt_provider(sim, private_key_file=str(path)))
            keeper.import_grant("g", provider="p", refresh_token=sim.issue_grant())
            with pytest.raises(ConfigurationError) as caught:
                keeper.refresh("g", force=True)
        message = caught.value.message
        assert expected in message and str(path) in message
        assert "BEGIN" not in message.replace("'-----BEGIN PRIVATE KEY-----'", "")
        assert sim.stats.refresh_calls == 0

    def test_missing_file(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        self.check(make_sim, tmp_path / "absent.pem", "cannot be read")

    def test_not_pem(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        path = tmp_path / "junk.pem"
        path.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        self.check(make_sim, path, "is not a PEM private key")

    def test_encrypted_key(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        path = tmp_path / "enc.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"pw")))  # fmt: skip
        self.check(make_sim, path, "is encrypted")

    def test_short_rsa_key(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        path = tmp_path / "short.pem"
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
        self.check(make_sim, path, "1024-bit")

    def test_unsupported_curve(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        path = tmp_path / "p384.pem"
        key = ec.generate_private_key(ec.SECP384R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
        self.check(make_sim, path, "EC P-256")


class TestProviderValidation:
    def test_private_key_jwt_needs_a_key_file(self) -> None:
        with pytest.raises(ConfigurationError, match="private key file"):
            Provider(
                name="p", token_url="https://a.example.com/t", client_id="c", auth_method=AuthMethod.PRIVATE_KEY_JWT
            )

    def test_key_file_only_with_private_key_jwt(self) -> None:
        with pytest.raises(ConfigurationError, match="only applies to private_key_jwt"):
            Provider(name="p", token_url="https://a.example.com/t", client_id="c", client_secret=Secret("s"),
                     private_key_file="/k.pem")  # fmt: skip

    def test_private_key_jwt_sends_no_secret(self) -> None:
        with pytest.raises(ConfigurationError, match="sends no client secret"):
            Provider(name="p", token_url="https://a.example.com/t", client_id="c", client_secret=Secret("s"),
                     auth_method=AuthMethod.PRIVATE_KEY_JWT, private_key_file="/k.pem")  # fmt: skip
