"""The options of `rung searcher` and `rung worker` for secrets and roles, parsed."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rung.cli.common import broker_url, parse_duration, redact
from rung.cli.main import build_parser
from rung.worker.environment import check_allow_name, is_secret, trial_environment


def test_the_searchers_roles_and_defaults() -> None:
    args = build_parser().parse_args(["searcher", "--broker", "amqp://u@h/"])
    assert args.verify_worker_users is True  # on unless turned off
    assert (args.admin, args.operator, args.worker_user) == ([], [], [])
    assert args.allow_custom_searchers is False
    assert args.context_retention == 7 * 86400.0
    argv = [
        *("searcher", "--no-verify-worker-users", "--admin", "alice", "--admin", "bob"),
        *("--operator", "ops", "--allow-custom-searchers", "--context-retention", "12h"),
        *("--dir-group", "rung"),
    ]
    args = build_parser().parse_args(argv)
    assert args.verify_worker_users is False
    assert (args.admin, args.operator) == (["alice", "bob"], ["ops"])
    assert args.allow_custom_searchers is True
    assert args.context_retention == 12 * 3600.0
    assert args.dir_group == "rung"


def test_the_workers_trial_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNG_TRIAL_USER", "rung-trial")
    args = build_parser().parse_args(["worker", "--trial-env", "WANDB_MODE"])
    assert args.trial_user == "rung-trial"
    assert args.trial_env == ["WANDB_MODE"]
    args = build_parser().parse_args(["worker", "--trial-user", "1234"])
    assert args.trial_user == "1234"


def test_durations() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("0") == 0
    assert parse_duration("1.5h") == 5400
    for bad in ("", "soon", "-1d", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_trial_env_names() -> None:
    assert check_allow_name("WANDB_MODE") == "WANDB_MODE"
    for secret in ("RUNG_BROKER_URL", "RUNG_BROKER_PASSWORD_FILE", "RUNG_BROKER_X", "RUNG_TLS_KEY"):
        assert is_secret(secret)
        with pytest.raises(ValueError, match="must never see"):
            check_allow_name(secret)
    with pytest.raises(ValueError, match="not an environment variable name"):
        check_allow_name("1BAD=")
    # Even allowed by an operator, a secret's family is never passed on.
    env = trial_environment(
        {"PATH": "/bin", "RUNG_BROKER_URL": "amqp://u:p@h/", "RUNG_BROKER_NEW": "x", "A": "1"},
        {"RUNG_TRIAL_INFO": "{}"},
        allow=["RUNG_BROKER_NEW", "A"],
    )
    assert env == {"PATH": "/bin", "A": "1", "RUNG_TRIAL_INFO": "{}"}


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["experiment", "list", *argv])


def test_a_password_on_the_command_line_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNG_BROKER_URL", "amqp://u:from-env@h/")
    with capture_logs() as logs:
        quiet = _args([])  # from the environment: not on a command line
        assert broker_url(quiet) == "amqp://u:from-env@h/"
        loud = _args(["--broker", "amqp://u:s3cret@h/v"])
        broker_url(loud)
        broker_url(loud)  # asked again: still one warning
        secret = tmp_path / "password"
        secret.write_text("s3cret")
        clean = _args(["--broker", "amqp://u@h/v", "--broker-password-file", str(secret)])
        assert broker_url(clean) == "amqp://u:s3cret@h/v"
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "--broker-password-file" in warnings[0]["event"]
    assert warnings[0]["broker"] == "amqp://u:***@h/v"
    assert "s3cret" not in str(warnings)


def test_redact() -> None:
    assert redact("amqps://u:p%40ss@[::1]:5671/v?x=1") == "amqps://u:***@[::1]:5671/v?x=1"
    assert redact("amqp://u@h/") == "amqp://u@h/"
