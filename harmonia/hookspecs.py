"""The pluggy hook specifications a harmonia plugin module implements.

A third-party plugin module is found through the ``harmonia`` entry-point group (harmonia's own
are listed in :data:`harmonia.registry.FIRST_PARTY_MODULES`) and implements one or more of these
hooks, each taking no arguments and returning a list of the plugin classes of one kind::

    from harmonia import hookimpl

    @hookimpl
    def harmonia_mitigations():
        return [MyMitigation]

A hook with arguments, a hook name that is not one of these, a hook that raises, or a returned
class that is not a proper plugin of the hook's kind (no ``name``, another kind, ``Params`` not
a pydantic model) is recorded as that plugin's failure: ``harmonia list`` shows it with the
reason and only a recipe that uses the plugin fails.
"""

from __future__ import annotations

import pluggy

PROJECT = "harmonia"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def harmonia_cohorts() -> list[type]:
    """Return :class:`harmonia.api.Cohort` subclasses this module provides.

    Example: ``return [MnmsCohort]``.
    """


@hookspec
def harmonia_models() -> list[type]:
    """Return :class:`harmonia.api.Model` subclasses this module provides.

    Example: ``return [UNet2D]``.
    """


@hookspec
def harmonia_mitigations() -> list[type]:
    """Return :class:`harmonia.api.Mitigation` subclasses this module provides.

    Example: ``return [DANN]``.
    """


@hookspec
def harmonia_evaluators() -> list[type]:
    """Return :class:`harmonia.api.Evaluator` subclasses this module provides.

    Example: ``return [Dice]``.
    """


#: the hook that registers each plugin kind
HOOK_OF_KIND = {
    "cohort": "harmonia_cohorts",
    "model": "harmonia_models",
    "mitigation": "harmonia_mitigations",
    "evaluator": "harmonia_evaluators",
}
