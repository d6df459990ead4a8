"""Settings: the contract names, validation that names the variable, secrets that stay secret."""

from __future__ import annotations

import logging

import pytest

from comfy.errors import ConfigError
from comfy.settings import DEFAULT_DATA_DIR, Settings, load_settings

SECRET = "Bearer sk-very-secret-token"


def test_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    settings = load_settings()
    assert settings.comfyui_url == "http://127.0.0.1:8188"
    assert settings.comfyui_urls == ["http://127.0.0.1:8188"]
    assert settings.data_dir == DEFAULT_DATA_DIR and settings.data_dir.is_absolute() and settings.max_in_flight == 2
    assert settings.backend_headers() == {}


def test_reads_contract_names_from_env(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMFYUI_URL", "https://abc123-8188.proxy.runpod.net/")
    monkeypatch.setenv("COMFYUI_HEADERS", '{"Authorization": "%s"}' % SECRET)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("STUDIO_MAX_STEPS", "80")
    settings = load_settings()
    assert settings.comfyui_url == "https://abc123-8188.proxy.runpod.net"
    assert settings.backend_headers() == {"Authorization": SECRET}
    assert settings.queue_dir == tmp_path / "d" / "queue"
    assert settings.max_steps == 80
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_reads_dotenv(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("COMFYUI_URL=http://10.0.0.5:8188\nSTUDIO_MAX_IN_FLIGHT=3\n")
    settings = load_settings()
    assert settings.comfyui_url == "http://10.0.0.5:8188" and settings.max_in_flight == 3


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("COMFYUI_URL", "localhost:8188", "COMFYUI_URL: Value error, each URL must start with http:// or https://"),
        ("STUDIO_MAX_IN_FLIGHT", "0", "STUDIO_MAX_IN_FLIGHT: Input should be greater than or equal to 1"),
        ("STUDIO_JOB_TIMEOUT", "soon", "STUDIO_JOB_TIMEOUT: Input should be a valid number"),
        ("COMFYUI_HEADERS", "Authorization: " + SECRET, "COMFYUI_HEADERS: Value error, must be a JSON object"),
    ],
)
def test_a_wrong_value_names_the_variable_and_hides_the_input(tmp_path, monkeypatch, env, value, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert fragment in str(info.value)
    assert SECRET not in str(info.value) and value not in str(info.value).replace(fragment, "")


def test_secret_never_logged(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    settings = Settings(comfyui_headers='{"X-Token": "%s"}' % SECRET)
    logging.getLogger("test").info("settings: %s / %r", settings, settings)
    assert SECRET not in caplog.text


def test_several_urls_for_a_pool(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(comfyui_url="http://a:8188, http://b:8188/")
    assert settings.comfyui_urls == ["http://a:8188", "http://b:8188"]
