"""The pluggy hook specifications a harmonia plugin module implements.

A plugin module is found through the ``harmonia`` entry-point group and implements one or more
of these hooks, each returning the plugin classes of one kind::

    from harmonia import hookimpl

    @hookimpl
    def harmonia_mitigations():
        return [MyMitigation]
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
