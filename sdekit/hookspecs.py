"""sdekit's plugin hooks (pluggy project name ``sdekit``).

Built-in samplers register through these same hooks, so the hooks can never fall
behind what a plugin needs. Hook names are ``sdekit_<verb>_<noun>``. pluggy
passes a hook implementation only the arguments it names, so arguments added to
a hook in a later API version never break a plugin written against an earlier one.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("sdekit")
hookimpl = pluggy.HookimplMarker("sdekit")


@hookspec
def sdekit_register_samplers(register):
    """Register samplers, predictors and correctors.

    Call ``register(spec)`` once per :class:`sdekit.samplers.SamplerSpec`. The
    host validates each spec (name, kind, options) and records which plugin gave
    it; a plugin whose hook raises, or registers an invalid spec, is reported as
    broken by name and none of its specs are kept.

    Added in API version 1.
    """
