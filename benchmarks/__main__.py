"""Run benchmarks: ``python -m benchmarks`` (all) or ``python -m benchmarks capture store``."""

from __future__ import annotations

import importlib
import sys

ALL = ["startup", "capture", "streaming", "store", "tcav", "erasure", "rocr", "generate", "obsprop", "sae", "activation_reasoning", "scale"]


def main(argv: list[str]) -> None:
    names = argv or ALL
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()


if __name__ == "__main__":
    main(sys.argv[1:])
