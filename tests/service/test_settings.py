"""recall.service.settings: RECALL_* variables, and admin tokens that must not be accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from recall.service.settings import Settings, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]
GOOD = "9f2c4e1ab7d05e3c88a1f6b2d4e0c7a9"


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"RECALL_{name.upper()}", value)
    return Settings()


def refusal(monkeypatch: pytest.MonkeyPatch, token: str) -> str:
    with pytest.raises(ValidationError) as caught:
        settings_from_env(monkeypatch, root="/bundles", admin_token=token)
    message = str(caught.value)
    assert "admin_token" in message
    if token.strip():
        assert token.strip() not in message  # a secret is never echoed
    return message


def test_a_random_token_enables_the_admin_api(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(monkeypatch, root="/bundles", admin_token=GOOD)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == GOOD


@pytest.mark.parametrize("env", [{}, {"admin_token": ""}])
def test_unset_or_empty_token_disables_the_admin_api(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.delenv("RECALL_ADMIN_TOKEN", raising=False)
    assert settings_from_env(monkeypatch, root="/bundles", **env).admin_token is None


@pytest.mark.parametrize(
    "token",
    [
        "change-me-to-a-long-random-string",  # what docker/.env.example used to ship
        "CHANGE_ME_0123456789abcdef",
        "changeme0123456789abcdef",
        "Change-Me-Please-Now-0123",
        "replace-me-with-a-real-token",
        "your-token-here-0123456789",
        "a" * 24,
        "0" * 16,
    ],
)
def test_placeholders_are_refused(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    assert "placeholder" in refusal(monkeypatch, token)


@pytest.mark.parametrize(
    "token", [" " * 16, "\t" * 20, f" {GOOD}", f"{GOOD}\n", f"{GOOD} ", "\u00a0" + GOOD]
)
def test_blank_or_padded_tokens_are_refused(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    assert "whitespace" in refusal(monkeypatch, token)


def test_short_tokens_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "at least 16" in refusal(monkeypatch, GOOD[:15])


def test_env_example_leaves_the_admin_api_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copied unedited, docker/.env.example gives valid settings with admin disabled, and
    says how to make a token."""
    text = (REPO / "docker" / ".env.example").read_text()
    env = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.startswith("RECALL_") and "=" in line
    )
    assert env["RECALL_ADMIN_TOKEN"] == ""
    assert "openssl rand" in text
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECALL_ROOT", "/bundles")
    assert Settings().admin_token is None


def test_load_settings_names_variables_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECALL_ROOT", raising=False)
    monkeypatch.setenv("RECALL_SEARCH_THREADS", "many")
    with pytest.raises(SettingsError) as caught:
        load_settings({"root": "--root"})
    assert str(caught.value) == (
        "set --root or RECALL_ROOT; RECALL_SEARCH_THREADS: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_an_s3_root_needs_a_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recall.index.roots import S3Location

    monkeypatch.setenv("RECALL_ROOT", "s3://my-bucket/recall/")
    with pytest.raises(SettingsError, match=r"^an s3:// root needs RECALL_CACHE_DIR"):
        load_settings()
    monkeypatch.setenv("RECALL_CACHE_DIR", str(tmp_path / "cache"))
    settings = load_settings()
    assert settings.root == S3Location("my-bucket", "recall")
    assert settings.state_url == f"sqlite://{tmp_path}/cache/.state/events.sqlite"
    monkeypatch.setenv("RECALL_ROOT", "s3://Not_A_Bucket/x")
    with pytest.raises(SettingsError, match=r"RECALL_ROOT: .*not a valid S3 bucket name"):
        load_settings()
