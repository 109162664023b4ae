"""Error types that separate bad user input (exit status 2) from internal failures (exit status 1)."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line for a message: its type and its text with whitespace collapsed."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


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


class UnreadableFile(DataError):
    """One file that cannot be read (corrupt, truncated, no pixels, undecodable); keeps path and reason apart.

    The reason never contains the path, so it can go into a run's ``unreadable.csv`` while the
    path, which may hold a patient's folder name, stays on the user's console.
    """

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
