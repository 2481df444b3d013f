"""Heavy frameworks stay out of `import conceptkit` and `conceptkit plugins`."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("transformer_lens", "nnsight", "diffusers", "transformers", "torch")

PROBE = """
import sys, json
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _loaded(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_conceptkit_imports_no_framework():
    """`import conceptkit` imports none of torch, transformers, transformer_lens, nnsight, diffusers."""
    assert _loaded("import conceptkit") == []


FRAMEWORKS = set(HEAVY)


def test_listing_plugins_imports_no_framework():
    """`conceptkit.plugins()` and the `plugins` command import no model framework, not even
    torch, with the first-party method plugins installed (they register light classes)."""
    assert not FRAMEWORKS & set(_loaded("import conceptkit; conceptkit.plugins(); conceptkit.methods()"))
    body = (
        "from conceptkit.cli import main\n"
        "try:\n    main(['plugins', '--json'])\nexcept SystemExit:\n    pass\n"
        "sys.stdout.flush()"
    )
    loaded = _loaded(body)
    assert not FRAMEWORKS & set(loaded), loaded
