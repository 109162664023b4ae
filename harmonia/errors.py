"""Error types that separate bad user input (exit status 2) from internal failures (exit status 1)."""


class HarmoniaError(Exception):
    """Base class for every error harmonia raises on purpose."""


class InputError(HarmoniaError):
    """Bad input from the user: a recipe, a data folder, a command-line value.

    The message is one line that names the file (or key path) and what is wrong;
    the command line prints it without a traceback and exits with status 2.
    """


class RecipeError(InputError):
    """A recipe that cannot be read or does not validate."""


class DataError(InputError):
    """A dataset folder or file that is missing, incomplete or malformed."""


class PluginError(InputError):
    """A plugin that is unknown, failed to import, or clashes with another one."""
