"""Print the issue-10 figures table from the adversarial tests.

    python -m tests.adversarial.figures [pytest args or test files...]

Runs ``tests/adversarial`` (or the files given) with ``CONCEPTKIT_FIGURES`` set, then aggregates the tallies by area.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.adversarial.tally import FIGURES_ENV


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.jsonl"
        env = dict(os.environ, **{FIGURES_ENV: str(out)})
        targets = [] if any(not a.startswith("-") for a in argv) else [str(root / "tests" / "adversarial")]
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets, *argv], env=env, cwd=root)
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        t = table[row["area"]]
        t["tried"] += 1
        t["clear"] += row["outcome"] == "clear"
        t["bad"] += row["outcome"] != "clear"
        t["lost"] += row["lost"]
    print("\n| area | inputs tried | clear error | crash or silent misbehaviour | acknowledged records lost |")
    print("|---|---|---|---|---|")
    for area in sorted(table):
        t = table[area]
        print(f"| {area} | {t['tried']} | {t['clear']} | {t['bad']} | {t['lost']} |")
    total = sum(table.values(), collections.Counter())
    print(f"| **total** | {total['tried']} | {total['clear']} | {total['bad']} | {total['lost']} |")
    print(f"\npytest exit code: {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
