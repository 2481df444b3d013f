"""``python -m conceptkit``: the same command as ``conceptkit``."""

from conceptkit.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
