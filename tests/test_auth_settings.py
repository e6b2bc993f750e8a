"""Better Auth's settings: validated at start-up, one line naming the variable, never a secret."""

from __future__ import annotations

import pytest

from harness.service import run_flask
from service.config import BETTER_AUTH_DEVELOPMENT_SECRET, ConfigError, Settings, load_settings

URL = "https://auth.example.test"
STRONG = "s" * 32
PRODUCTION = {
    "APP_ENV": "production",
    "DATABASE_URL": "postgresql://app@db.internal:5432/app",
    "SECRET_KEY": "k" * 32,
    "BETTER_AUTH_URL": URL,
}


def load(**environ: str) -> Settings:
    return load_settings(environ=environ, instance_path="/nonexistent")


def refused(**environ: str) -> str:
    with pytest.raises(ConfigError) as error:
        load(**environ)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_better_auth_is_off_until_its_url_is_set_and_then_signs_as_it_does() -> None:
    off = load()
    assert off.better_auth_url is None
    assert off.better_auth_cookie_name == "better-auth.session_token"
    assert off.better_auth_allow_unsigned_bearer is False
    assert off.better_auth_jwks_refetch_s == 5.0
    # Outside production, no secret means Better Auth's own public default, as Better Auth does.
    assert load(BETTER_AUTH_URL=URL).better_auth_signing_secret == BETTER_AUTH_DEVELOPMENT_SECRET
    assert load(BETTER_AUTH_URL=URL, BETTER_AUTH_SECRET="one").better_auth_signing_secret == "one"
    rotated = load(BETTER_AUTH_URL=URL, BETTER_AUTH_SECRET="one", BETTER_AUTH_SECRETS="3:c, 1:a")
    assert rotated.better_auth_signing_secret == "c"  # the first entry is current


def test_the_cookie_name_follows_the_url_scheme_and_the_prefix() -> None:
    assert load(BETTER_AUTH_URL=URL).better_auth_cookie_name == (
        "__Secure-better-auth.session_token"
    )
    plain = load(BETTER_AUTH_URL="http://localhost:3000", BETTER_AUTH_COOKIE_PREFIX="shop")
    assert plain.better_auth_cookie_name == "shop.session_token"
    assert "BETTER_AUTH_COOKIE_PREFIX" in refused(BETTER_AUTH_COOKIE_PREFIX="a;b")


def test_origins_are_normalised_and_anything_else_refused() -> None:
    loaded = load(
        BETTER_AUTH_URL="HTTPS://Auth.Example.test:443/",
        BETTER_AUTH_TRUSTED_ORIGINS=(
            "http://localhost:5173, https://app.example.test:8443, http://shop.example.test:80"
        ),
    )
    assert loaded.better_auth_url == "https://auth.example.test"
    assert loaded.better_auth_trusted == {
        "https://auth.example.test",
        "http://localhost:5173",
        "https://app.example.test:8443",
        "http://shop.example.test",
    }
    for bad in (
        "auth.example.test",
        "ftp://x.test",
        "https://x.test/api/auth",
        "https://u:p@x.test",
        "https://x.test:99999",  # urlsplit raises on these two: still one line
        "http://[::1",
    ):
        assert refused(BETTER_AUTH_URL=bad).startswith("BETTER_AUTH_URL: "), bad
    message = refused(BETTER_AUTH_URL=URL, BETTER_AUTH_TRUSTED_ORIGINS="https://ok.test,nope")
    assert message.startswith("BETTER_AUTH_TRUSTED_ORIGINS: ")


def test_secrets_in_better_auths_format_or_a_line_naming_the_entry() -> None:
    for raw, why in (
        ("new", "entry 1 is not <version>:<secret>"),
        ("2:new,old", "entry 2 is not <version>:<secret>"),
        ("x:new", "entry 1: the version must be a non-negative whole number"),
        ("-1:new", "entry 1: the version must be a non-negative whole number"),
        ("\u00b2:new", "entry 1: the version must be a non-negative whole number"),
        ("2:new,1: ", "entry 2: the secret is empty"),
        ("1:new,1:old", "entry 2: version 1 appears twice"),
    ):
        message = refused(BETTER_AUTH_URL=URL, BETTER_AUTH_SECRETS=raw)
        assert message == f"BETTER_AUTH_SECRETS: {why}", message
        assert "new" not in message.replace("non-negative", "")


def test_a_secret_without_the_url_is_refused() -> None:
    assert refused(BETTER_AUTH_SECRET=STRONG) == "BETTER_AUTH_URL: required with BETTER_AUTH_SECRET"
    assert refused(BETTER_AUTH_SECRETS="1:" + STRONG).startswith("BETTER_AUTH_URL: required")


def test_production_refuses_no_secret_the_public_default_and_a_short_one() -> None:
    assert refused(**PRODUCTION).startswith("BETTER_AUTH_SECRET: required in production")
    public = refused(**PRODUCTION, BETTER_AUTH_SECRET=f" {BETTER_AUTH_DEVELOPMENT_SECRET} ")
    assert public == "BETTER_AUTH_SECRET: Better Auth's public default secret, not in production"
    short = refused(**PRODUCTION, BETTER_AUTH_SECRET="s" * 31)
    assert short.startswith("BETTER_AUTH_SECRET: too short for production, use at least 32")
    assert "s" * 31 not in short
    old_short = refused(**PRODUCTION, BETTER_AUTH_SECRETS=f"2:{STRONG},1:short")
    assert old_short.startswith("BETTER_AUTH_SECRETS: too short for production")
    # At least 32 characters, not exactly 32; any but the public default, whatever it sorts after.
    for secret in (STRONG, "A" * 64):
        assert load(**PRODUCTION, BETTER_AUTH_SECRET=secret).better_auth_signing_secret == secret
    assert (
        load(**PRODUCTION, BETTER_AUTH_SECRETS=f"2:{STRONG}").better_auth_signing_secret == STRONG
    )
    assert load(**{**PRODUCTION, "BETTER_AUTH_URL": ""}).better_auth_url is None  # off is fine


def test_booleans_are_words_and_anything_else_is_refused() -> None:
    for word, value in (("true", True), ("ON", True), ("1", True), ("no", False), ("0", False)):
        assert (
            load(BETTER_AUTH_ALLOW_UNSIGNED_BEARER=word).better_auth_allow_unsigned_bearer is value
        )
    message = refused(BETTER_AUTH_ALLOW_UNSIGNED_BEARER="maybe")
    assert message == "BETTER_AUTH_ALLOW_UNSIGNED_BEARER: 'maybe' is not true or false"


def test_every_better_auth_secret_is_known_to_the_redactor_and_hidden_from_repr() -> None:
    loaded = load(BETTER_AUTH_URL=URL, BETTER_AUTH_SECRET="first-secret-value",
                  BETTER_AUTH_SECRETS="2:second-secret-value,1:third-secret-value")  # fmt: skip
    assert {
        "first-secret-value",
        "second-secret-value",
        "third-secret-value",
        "2:second-secret-value,1:third-secret-value",
    } <= set(loaded.secrets)
    assert "secret-value" not in repr(loaded)


def test_a_bad_secret_stops_the_process_with_one_line_and_no_secret() -> None:
    result = run_flask(
        ["db", "current"],
        {"APP_ENV": "production", "DATABASE_URL": "postgresql://app@127.0.0.1:1/app",
         "SECRET_KEY": "k" * 32, "BETTER_AUTH_URL": URL, "BETTER_AUTH_SECRET": "tiny-secret-value"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "configuration error: BETTER_AUTH_SECRET: too short for production" in result.stderr
    assert "tiny-secret-value" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
