"""`stagelr serve --workers N` / STAGELR_WORKERS: parsing, and how the workers get their
settings (the command line's overrides included) from the serving process."""

from __future__ import annotations

import pytest

from stagelr_service.cli import _settings, build_parser
from stagelr_service.settings import Settings, settings_environment, usable_cpus


def test_serve_takes_a_number_of_workers_or_auto() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--workers", "3"]).workers == 3
    assert parser.parse_args(["serve", "--workers", "auto"]).workers == "auto"
    assert parser.parse_args(["serve"]).workers is None  # then STAGELR_WORKERS, default 1


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5", "257"])
def test_serve_refuses_a_bad_number_of_workers(bad: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--workers", bad])
    assert exited.value.code == 2
    assert "auto" in capsys.readouterr().err


def test_the_option_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGELR_WORKERS", "4")
    assert Settings().worker_count == 4
    args = build_parser().parse_args(["serve", "--workers", "2"])
    assert _settings(args).worker_count == 2
    assert _settings(build_parser().parse_args(["serve"])).worker_count == 4


def test_auto_is_one_worker_per_usable_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGELR_WORKERS", "auto")
    assert Settings().worker_count == usable_cpus() >= 1
    assert Settings().workers == "auto"
    monkeypatch.setenv("STAGELR_WORKERS", "0")
    with pytest.raises(ValueError, match="workers"):
        Settings()


def test_workers_read_back_the_settings_of_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each worker process builds its app from the environment: what `serve` puts there
    # gives back the settings it was started with, overrides and defaults alike.
    given = Settings(database_url="sqlite:////tmp/x.db", port=9123, workers=2, auto_migrate=True)
    env = settings_environment(given)
    for name in list(env):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == given
    assert "STAGELR_METRICS_TOKEN" not in env  # unset stays unset
