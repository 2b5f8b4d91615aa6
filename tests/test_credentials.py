"""A password in --storage is never stored, printed or logged: not in the study, the report, W&B or the terminal.

``safe_url`` is the one masking rule; the end-to-end tests run ``sweep`` and ``report`` through the CLI
with offline W&B and then grep every byte written (report folder, artifacts, sweep.json, the W&B
offline runs, the study's attributes, stdout/stderr) for the password.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
from helpers.postgres import pg_url  # noqa: F401  (a private PostgreSQL server; skipped where there is none)

from bench.cli import main
from bench.report.escape import md_escape
from bench.store.storage import open_storage
from bench.store.untrusted import redact, safe_url, url_password
from ddim.errors import DDIMError

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    "url,masked",
    [
        ("postgresql://u:s3cr3t@host/db", "postgresql://u:***@host/db"),
        ("postgresql+psycopg2://u:p@ss@host:5432/db", "postgresql+psycopg2://u:***@host:5432/db"),  # raw "@"
        ("postgresql://:pw@host/db", "postgresql://:***@host/db"),
        ("postgresql://h/db?user=u&password=s3cr3t&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
        ("postgresql://h/db?PASSWORD=s3cr3t", "postgresql://h/db?PASSWORD=***"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),  # no password: untouched
        ("postgresql://host:5432/db", "postgresql://host:5432/db"),
        ("sqlite:///ddimbench-sweeps.db", "sqlite:///ddimbench-sweeps.db"),
        ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),
        ("postgresql://u:***@host/db", "postgresql://u:***@host/db"),  # masking twice changes nothing
        ("sweep --storage 'postgresql://u:pa ss@h/db' n=5", "sweep --storage 'postgresql://u:***@h/db' n=5"),
        ("a://u:x@h1 and b://v:y@h2", "a://u:***@h1 and b://v:***@h2"),
        ("--storage=postgresql://u:s3cr3t@host/db", "--storage=postgresql://u:***@host/db"),
    ],
)  # fmt: skip
def test_safe_url_masks_every_password(url: str, masked: str) -> None:
    assert safe_url(url) == masked


def test_redact_reaches_every_string() -> None:
    value = {"command": "x --storage postgresql://u:pw1@h/db", "runs": [{"c": "postgresql://u:pw2@h/db"}], "n": 3,
             "t": ("postgresql://h/db?password=pw3",), "postgresql://u:pw4@h/db": None}  # fmt: skip
    assert not any(pw in json.dumps(redact(value)) for pw in ("pw1", "pw2", "pw3", "pw4"))
    assert redact(value)["n"] == 3 and url_password("postgresql://u:p@ss@h/db") == "p@ss"


def test_storage_errors_never_show_the_password() -> None:
    # A raw "@" in the password: SQLAlchemy would take the rest for the host name and echo it in its error.
    with pytest.raises(DDIMError) as info:
        open_storage(f"postgresql+psycopg2://u:ab@{SECRET}@127.0.0.1:1/db")
    assert "%40" in str(info.value) and SECRET not in str(info.value) and "\n" not in str(info.value)
    pytest.importorskip("psycopg2")
    for url in (
        f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/db",
        f"postgresql+psycopg2://u@127.0.0.1:1/db?password={SECRET}",
    ):
        with pytest.raises(DDIMError) as info:  # nothing listens on port 1
            open_storage(url)
        assert "cannot open sweep storage" in str(info.value) and SECRET not in str(info.value)


def _sweep_and_report(storage: str, typed: str, ckpt: Path, cache: Path, work: Path, capsys, monkeypatch) -> str:
    """``sweep`` then ``report`` through the CLI with offline W&B; ``typed`` is the --storage on the command
    line as the user typed it (what the study, W&B and the report could record). Returns all that was printed."""
    sweep = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=pw", "steps=2", "eta=0", "n=20", "batch=10",
             "interpolation=false", "--wandb", "offline"]  # fmt: skip
    report = ["report", "pw", "--wandb", "offline"]
    printed = []
    for argv in (sweep, report):
        monkeypatch.setattr(sys, "argv", ["ddimbench", *argv, "--storage", typed])  # as the console script sees it
        assert main([*argv, "--storage", storage]) == 0
        printed.append("".join(capsys.readouterr()))
    return "\n".join(printed)


def _assert_nowhere(secret: str, work: Path, storage: str, printed: str) -> None:
    assert secret not in printed
    wrote = [p for p in work.rglob("*") if p.is_file() and p.suffix != ".db" and ".db-" not in p.name]
    assert any(p.name == "README.md" for p in wrote) and any(p.suffix == ".wandb" for p in wrote)  # not vacuous
    leaked = [str(p) for p in wrote if secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    study = optuna.load_study(study_name="pw", storage=open_storage(storage))
    attrs = json.dumps([study.user_attrs, [t.user_attrs for t in study.trials]])
    assert "***" in attrs and secret not in attrs  # the command is recorded, masked


def test_no_password_anywhere_after_a_sweep_and_report_sqlite(ckpt, cache, work, capsys, monkeypatch) -> None:
    """The store is SQLite (it takes no password); the command line as typed names a PostgreSQL URL with a
    password, a raw "@" and a query password: what a user on one machine of a PostgreSQL sweep typed."""
    storage = f"sqlite:///{work / 'sweeps.db'}"
    typed = f"postgresql://u:p@{SECRET}@h/db?password={SECRET}x"
    printed = _sweep_and_report(storage, typed, ckpt, cache, work, capsys, monkeypatch)
    _assert_nowhere(SECRET, work, storage, printed)
    readme = (work / "reports" / "pw" / "README.md").read_text()
    assert md_escape("postgresql://u:***@h/db?password=***") in readme  # as Markdown text: \*\*\*


def test_no_password_anywhere_after_a_sweep_and_report_postgres(
    ckpt,
    cache,
    work,
    capsys,
    monkeypatch,
    pg_url,  # noqa: F811
) -> None:
    """A real PostgreSQL store reached through a URL with a password (the test server trusts loopback, so
    any password connects) and another one as a query parameter."""
    storage = pg_url.replace("postgres@", f"postgres:{SECRET}@", 1) + f"?password={SECRET}"
    printed = _sweep_and_report(storage, storage, ckpt, cache, work, capsys, monkeypatch)
    _assert_nowhere(SECRET, work, storage, printed)
