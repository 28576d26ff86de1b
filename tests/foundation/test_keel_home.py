"""keel finds its home (stack, key file, pid files) the same way from any working directory:
KEEL_HOME, else the .keel/ of the checkout the `keel` command is installed from, else the user's
data directory. Never the working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import KeelSettings, installed_checkout, user_data_home

REPO = Path(__file__).resolve().parents[2]
KEEL = Path(sys.executable).parent / "keel"  # the console script `make install` put in .venv


def _keel(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KEEL_HOME", "KEEL_ENCRYPTION_KEYS_FILE", "XDG_DATA_HOME")
    }
    environment.update(env, COLUMNS="250", NO_COLOR="1")
    return subprocess.run(
        [str(KEEL), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _shown_config(cwd: Path, **env: str) -> dict[str, object]:
    result = _keel("config", "show", "--json", cwd=cwd, **env)
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


@pytest.mark.slow  # real `keel` processes
def test_keel_run_from_another_directory_finds_the_checkouts_home(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    in_checkout = _shown_config(REPO)
    from_elsewhere = _shown_config(elsewhere)

    assert in_checkout["home"] == from_elsewhere["home"] == str(REPO / ".keel")
    assert (
        in_checkout["effective_encryption_keys_file"]
        == from_elsewhere["effective_encryption_keys_file"]
        == str(REPO / ".keel" / "encryption-keys")
    )
    assert str(REPO) in str(from_elsewhere["home_origin"])
    assert not (elsewhere / ".keel").exists()

    status = _keel("dev", "status", "--json", cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["home"] == str(REPO / ".keel")
    assert not (elsewhere / ".keel").exists()


@pytest.mark.slow  # a real `keel` process
def test_an_explicit_keel_home_wins(tmp_path: Path) -> None:
    shown = _shown_config(tmp_path, KEEL_HOME=str(tmp_path / "mine"))
    assert shown["home"] == str(tmp_path / "mine")
    assert shown["home_origin"] == "KEEL_HOME"
    assert shown["effective_encryption_keys_file"] == str(tmp_path / "mine" / "encryption-keys")


def test_this_checkout_is_recognised_as_the_installed_one() -> None:
    assert installed_checkout() == REPO
    assert KeelSettings(_env_file=None).home == REPO / ".keel"


def test_the_user_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert user_data_home() == tmp_path / "keel"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert user_data_home() == Path.home() / ".local" / "share" / "keel"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_data_home() == Path.home() / ".local" / "share" / "keel"
