"""The ``conceptkit`` command: a thin layer over the Python API.

Errors that conceptkit raises on purpose print as one line naming the culprit and exit 1 (usage
errors exit 2); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from conceptkit.errors import ConceptkitError

_DEBUG = False


from conceptkit._cli_output import console as _console  # noqa: E402,F401 - shared with cli_store (no import circle)
from conceptkit._cli_output import table as _table  # noqa: E402


class ConceptkitGroup(click.Group):
    """The root group; loads plugin-provided commands on first use."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if ConceptkitGroup._plugins_loaded:
            return
        ConceptkitGroup._plugins_loaded = True
        from conceptkit.plugin_manager import add_plugin_commands

        # Plugins may add commands, never replace one (failures are reported by distribution).
        add_plugin_commands(self, echo=lambda message: click.echo(message, err=True))

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd


@click.group(cls=ConceptkitGroup)
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="conceptkit")
def cli(debug: bool) -> None:
    """conceptkit: concept vectors in neural networks."""
    global _DEBUG
    _DEBUG = debug


# -- plugins, methods, models ---------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins (and plugins that failed to load)."""
    from conceptkit.plugin_manager import plugin_failures
    from conceptkit.plugin_manager import plugins as list_plugins

    infos, failures = list_plugins(), plugin_failures()
    if as_json:
        click.echo(json.dumps({"plugins": infos, "failures": [f.__dict__ for f in failures]}, indent=2))
        return
    rows = [[p["name"], p["distribution"], p["version"], ", ".join(p["methods"]), ", ".join(p["hooks"])] for p in infos]
    _table("plugins", ["name", "distribution", "version", "methods", "hooks"], rows)
    for failure in failures:
        click.echo(f"failed: {failure}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def methods(as_json: bool) -> None:
    """List registered methods."""
    from conceptkit.plugin_manager import method_plugin
    from conceptkit.plugin_manager import methods as list_methods

    items = list_methods()
    data = [
        {"name": n, "plugin": method_plugin(n).name, "requires": sorted(c.value for c in cls.requires),
         "supports_ray": bool(getattr(cls, "supports_ray", False)), "description": cls.description}
        for n, cls in items.items()
    ]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _table("methods", ["name", "plugin", "requires", "--ray", "description"],
           [[d["name"], d["plugin"], ", ".join(d["requires"]), "yes" if d["supports_ray"] else "", d["description"]] for d in data])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """List named models."""
    from conceptkit.plugin_manager import get_manager

    entries = get_manager().registry.models.values()
    data = [{"name": e.name, "backends": list(e.backends), "plugin": e.plugin, "description": e.description} for e in entries]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _table("models", ["name", "backends", "description"], [[d["name"], ", ".join(d["backends"]), d["description"]] for d in data])


# -- run ------------------------------------------------------------------------------------------
def _field_default(field: Any) -> str:
    """The real default of a config field as help shows it: factories are called (a
    ``default_factory`` shows as null in the JSON schema), ``None`` reads as "none"."""
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined or value is None:
        return "default: none"
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    text = json.dumps(value, default=str)
    return f"default: {text if len(text) <= 80 else text[:77] + '...'}"


def _schema_help(method_cls: type) -> str:
    schema = method_cls.Config.model_json_schema()
    lines = ["Config fields (YAML/JSON file or --set key=value):"]
    fields = method_cls.Config.model_fields
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or " | ".join(p.get("type", "?") for p in prop.get("anyOf", [])) or "object"
        default = _field_default(fields[name]) if name in fields else "required"
        desc = prop.get("description", "")
        lines.append(f"  {name} ({kind}; {default}) {desc}".rstrip())
    return (method_cls.description or "") + "\n\n\b\n" + "\n".join(lines)


def _make_run_command(name: str, method_cls: type) -> click.Command:
    @click.command(name=name, help=_schema_help(method_cls))
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON config file.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
    @click.option("--model", "model_name", help="Named model, local path or HF id.")
    @click.option("--backend", default="transformer_lens", show_default=True, help="transformer_lens | nnsight | transformers | diffusers")
    @click.option("--store", "store_path", type=click.Path(file_okay=False), help="Store folder (default: $CONCEPTKIT_STORE or user data dir).")
    @click.option("--no-store", is_flag=True, help="Do not save results.")
    @click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the result's figure here.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="No stages or progress bars on stderr.")
    @click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                  help="Dataset-scale passes over Ray workers (methods with supports_ray); ADDRESS (auto, ray://host:10001) joins a cluster.")
    @click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Ray workers (with --ray).")
    def command(config_file, overrides, model_name, backend, store_path, no_store, plot_path, as_json, quiet, ray_address, workers):  # type: ignore[no-untyped-def]
        from conceptkit import progress
        from conceptkit.config_io import apply_overrides, load_config_file
        from conceptkit.contract import validate_config
        from conceptkit.plugin_manager import method

        if quiet:
            progress.configure(False)
        m = method(name)
        if ray_address is not None:
            from conceptkit.scale import check_ray_support

            check_ray_support(m)  # first: no config, model or store is touched for a method that cannot use Ray
        raw = load_config_file(config_file) if config_file else {}
        cfg = validate_config(m.Config, apply_overrides(raw, list(overrides)), name)  # before loading anything
        if plot_path:
            _check_plot_path(plot_path)
        model = None
        if model_name is None and m.needs_model:
            model_name = getattr(cfg, "model", None) or "smollm2-135m"
        if model_name is not None and m.needs_model:
            from conceptkit.models import load_model

            progress.stage(f"loading model {model_name} ({backend})")
            model = load_model(model_name, backend=backend)
        store = None
        if not no_store:
            from conceptkit.store import open_store

            store = open_store(store_path)
        progress.stage(f"running {name}" + (f" over {workers} Ray worker(s)" if ray_address is not None else ""))
        if ray_address is not None:
            from conceptkit.scale import use_ray

            with use_ray(None if ray_address == "local" else ray_address, workers=workers):
                result = m.run(model, cfg, store=store)  # workers compute; only this process stores
        else:
            result = m.run(model, cfg, store=store)
        progress.stage("done")
        if as_json:
            click.echo(result.model_dump_json(indent=2))
        else:
            click.echo(result.summary())
        if plot_path:
            written = result.plot(plot_path)
            click.echo(f"plot: {written}" if written else f"method {name!r} has no plot", err=not written)
        if result.record_ids:
            click.echo(f"stored {len(result.record_ids)} record(s) in {store.root}", err=True)  # type: ignore[union-attr]

    return command


def _check_plot_path(path: str) -> None:
    """Fail before any compute when a figure could not be written at the end."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise click.BadParameter(f"folder {str(folder)!r} does not exist", param_hint="--plot")
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise click.BadParameter(f"{path!r}: use a .png, .pdf, .svg or .jpg file", param_hint="--plot")


class RunGroup(click.Group):
    """``conceptkit run METHOD``: one subcommand per registered method, built from its Config."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from conceptkit.plugin_manager import methods as list_methods

        return sorted(list_methods())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from conceptkit.plugin_manager import methods as list_methods

        items = list_methods()
        if name not in items:
            from conceptkit.plugin_manager import method_class

            method_class(name)  # raises: unknown (with suggestions), or claimed by several distributions
        return _make_run_command(name, items[name])


@cli.group(cls=RunGroup)
def run() -> None:
    """Run a method: conceptkit run METHOD --config FILE [--set k=v] [--model NAME]."""


# -- demo -----------------------------------------------------------------------------------------
@cli.command()
@click.option("--store", "store_path", type=click.Path(file_okay=False), help="Store folder for the demo's vectors.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="conceptkit-demo", show_default=True, help="Where figures go.")
@click.option("--backend", default="transformer_lens", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars on stderr.")
def demo(store_path: str | None, out_dir: str, backend: str, quiet: bool) -> None:
    """Run the demo on the embedded SmolLM2-135M-Instruct."""
    from conceptkit import progress
    from conceptkit.demo import run_demo

    if quiet:
        progress.configure(False)

    run_demo(store_path=store_path, out_dir=Path(out_dir), backend=backend, echo=click.echo)


# -- store ----------------------------------------------------------------------------------------
from conceptkit.cli_store import store  # noqa: E402

cli.add_command(store)

# -- edit -----------------------------------------------------------------------------------------
from conceptkit.cli_edit import edit  # noqa: E402

cli.add_command(edit)
cli.add_command(__import__("conceptkit.cli_sae", fromlist=["sae"]).sae)  # conceptkit sae ...
cli.add_command(__import__("conceptkit.cli_capture", fromlist=["capture"]).capture)  # conceptkit capture [--ray]


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors unless --debug."""
    try:
        cli.main(args=argv, prog_name="conceptkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except (ConceptkitError, KeyError, ValueError, OSError) as exc:
        if _DEBUG or "--debug" in (argv if argv is not None else sys.argv):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        click.echo(f"error: {message}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
