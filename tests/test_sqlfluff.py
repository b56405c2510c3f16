"""`sqlfluff lint sql/` passes: the dbt project in the house style (.sqlfluff: dbt templater, DuckDB dialect).

Run from a copy of the repository's lint inputs so the dbt templater's target/ and logs/ never touch sql/target,
which a `loyalty-etl models` in another test may be writing at the same time; the `lint` target of
sql/profiles.yml is an in-memory DuckDB, so no warehouse file is needed or created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQLFLUFF = Path(sys.executable).with_name("sqlfluff")


def test_sqlfluff_lint_sql_passes(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".sqlfluff", tmp_path / ".sqlfluff")
    shutil.copytree(ROOT / "sql", tmp_path / "sql", ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_") and k != "LOYALTY_WAREHOUSE_PATH"}
    result = subprocess.run([str(SQLFLUFF), "lint", "sql/", "--nocolor"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    linted = [line for line in result.stdout.splitlines() if line.startswith("== [")]
    assert not linted, linted  # sqlfluff lists only files with violations
    assert "Project Compiled" in result.stdout + result.stderr  # the dbt templater ran, not a jinja fallback
    assert not list(tmp_path.glob("**/*.duckdb")), "linting created a warehouse file"
