"""What `run` and `backfill` share: their --source/--customers/--until/--no-models options, reading the settings and
the instants given on the command line, and the one error line with exit code 1.

Not a sub-command: cli.py skips modules whose name starts with "_". Light imports only here (`--help` stays instant);
the settings and logging modules are imported when a handler calls in.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from pipelines.registry import names as source_names


def add_source_option(p: argparse.ArgumentParser, help: str, *, repeatable: bool = False) -> None:
    """`--source NAME`: one source or "all" (the default), or with `repeatable` one source per use (none: all)."""
    if repeatable:
        p.add_argument("--source", action="append", choices=source_names(), help=help)
    else:
        p.add_argument("--source", choices=[*source_names(), "all"], default="all", help=help)


def add_customers_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--customers", metavar="FILE", help=help)


def add_until_option(p: argparse.ArgumentParser, help: str, **kw: Any) -> None:
    """`--until`: the end of the window (exclusive), parsed by `load` into a UTC instant."""
    p.add_argument("--until", help=help, **kw)


def add_no_models_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--no-models", action="store_true", help=help)


def chosen_sources(source: str | Sequence[str] | None) -> list[str]:
    """The sources an `--source` value selects: all for none or "all"."""
    if source is None or source == "all":
        return source_names()
    return [source] if isinstance(source, str) else list(source)


def load(**instants: str | None) -> tuple[Any, list[Any]]:
    """The settings, and the instants given (`since="2024-01-01"` is the value of `--since`) as UTC instants, None
    for a None. Raises `ConfigError` with a message that names the setting or option and how to fix it."""
    from pipelines.config import load_settings, parse_instant

    settings = load_settings()
    return settings, [None if v is None else parse_instant(v, f"--{name}") for name, v in instants.items()]


class SettingDefaultsHelp(argparse.HelpFormatter):
    """Ends the help of an option that stands in for a setting (`action.setting = ("loyalty", "dashboard_timezone")`)
    with that setting and its default, read from the setting's spec class only when help is printed: importing the
    specs (dlt) costs about a second that the command line does not pay otherwise."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        setting = getattr(action, "setting", None)
        if setting:
            from pipelines.config import setting_default

            section, key = setting
            text += f" (default: [{section}] {key}, which is {setting_default(section, key)} unless set)"
        return text


def fail(exc: BaseException) -> int:
    """One line on stderr, secrets redacted, no traceback; the exit code of a failed run (1)."""
    from pipelines.logs import redact
    from pipelines.report import EXIT_FAILED

    print(f"error: {redact(str(exc))}", file=sys.stderr)
    return EXIT_FAILED
