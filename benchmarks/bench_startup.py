"""`import conceptkit` time and `conceptkit plugins` wall time (vs a bare interpreter)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks._timing import interleaved


def main() -> None:
    def run(code: str) -> callable:
        return lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)

    times = interleaved(
        {
            "python -c pass": run("pass"),
            "import conceptkit": run("import conceptkit"),
            "conceptkit plugins": run("from conceptkit.cli import main\ntry: main(['plugins'])\nexcept SystemExit: pass"),
            "import torch (for scale)": run("import torch"),
        },
        repeats=7,
    )
    base = times["python -c pass"]
    for name, t in times.items():
        print(f"  {name:<28} {t * 1000:7.1f} ms wall   (+{(t - base) * 1000:6.1f} ms over a bare interpreter)")


if __name__ == "__main__":
    main()
