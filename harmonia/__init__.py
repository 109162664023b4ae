"""harmonia: measure and mitigate scanner domain shift in medical imaging.

Library use::

    import harmonia
    run = harmonia.run("recipes/mnms_dann.yaml", overrides=["train.seeds=2"])
    run.results  # tidy pandas DataFrame
"""

from harmonia.hookspecs import hookimpl

try:  # the one version literal is pyproject.toml's; an installed distribution carries it
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("harmonia")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_API = {"run", "resume", "load_recipe", "list_plugins", "create_plugin", "load_model", "Run"}


def __getattr__(name: str):
    """Import the Python API lazily, so plugins importing ``hookimpl`` do not pull in torch training code."""
    if name in _API:
        from harmonia import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'harmonia' has no attribute {name!r}")


__all__ = ["__version__", "hookimpl", *sorted(_API)]
