"""Entry-point module: registers the TCAV method (imports stay light until the method runs)."""

from __future__ import annotations

import conceptkit as ck


@ck.hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    from conceptkit_tcav.method import TCAV

    register(TCAV)


@ck.hookimpl
def register_commands(cli):  # type: ignore[no-untyped-def]
    import click

    @cli.group(name="tcav-cache")
    def tcav_cache():  # type: ignore[no-untyped-def]
        """TCAV's disk cache of activations and gradients ($CONCEPTKIT_CACHE/tcav or the user cache folder)."""

    @tcav_cache.command(name="info")
    def info():  # type: ignore[no-untyped-def]
        """Where the cache is and how big it is."""
        from conceptkit_tcav import cache

        i = cache.info()
        click.echo(f"{i['path']}: {i['files']} file(s), {i['bytes'] / 1e6:.1f} MB")

    @tcav_cache.command(name="clear")
    def clear():  # type: ignore[no-untyped-def]
        """Delete every cached activation and gradient (they are recomputed on the next run)."""
        from conceptkit_tcav import cache

        click.echo(f"removed {cache.clear()} file(s) from {cache.cache_root()}")
