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


class CellFailed(HarmoniaError):
    """A (sweep point, seed, training domain) cell that raised; the message names the cell and the plugin.

    The cells finished before it are kept; the traceback is in the run folder's ``harmonia.log``.
    """

    def __init__(self, message: str, run_dir: object):
        super().__init__(message)
        self.run_dir = str(run_dir)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying the run folder so the message can say what to resume."""

    def __init__(self, run_dir: object):
        super().__init__(str(run_dir))
        self.run_dir = str(run_dir)


class TrainingDiverged(HarmoniaError):
    """The training loss became NaN or infinite; the message says at which epoch and step, the value, and what to try.

    The message holds numbers and setting names only, never data or patient identifiers.
    """
