"""Method configurations from files and ``--set key=value`` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conceptkit.errors import ConfigError, shorten

#: largest config file read (a method config is a few hundred bytes)
MAX_CONFIG_BYTES = 1 << 20


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses aliases (``*name``): a few hundred bytes of nested
    aliases expand to gigabytes (the "billion laughs"), and a config never needs them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ConfigError(
                    f"{where}: YAML alias *{shorten(str(event.anchor), 60)} at line {event.start_mark.line + 1} refused; "
                    "write the value out instead (aliases can expand without bound)"
                )
            return super().compose_node(parent, index)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A mapping from a ``.yaml``/``.yml``/``.json`` file; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} is not a file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is {size} bytes, over the limit of {MAX_CONFIG_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        elif suffix in (".yaml", ".yml"):
            data = safe_yaml(text, f"config file {str(path)!r}") or {}
        else:
            raise ConfigError(f"config file {str(path)!r}: use a .yaml, .yml or .json file")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except Exception as exc:  # yaml.YAMLError
        if isinstance(exc, ConfigError):
            raise
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {shorten(str(getattr(exc, 'problem', None) or exc), 300)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, not {type(data).__name__}")
    return data


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides; values are parsed as YAML scalars/lists (``3``, ``[1,2]``)."""
    out = json.loads(json.dumps(config))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {shorten(item, 200)!r}")
        try:
            value = safe_yaml(raw, f"--set {shorten(key, 80)}") if raw.strip() else raw
        except ConfigError:
            raise
        except Exception:
            value = raw
        if isinstance(value, str) and raw != raw.strip() and value == raw.strip():
            # YAML strips the whitespace around a plain scalar; on the command line it is meant
            # (--set token=" good": SmolLM2's " good" and "good" are different tokens).
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return out
