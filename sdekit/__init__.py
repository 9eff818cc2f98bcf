"""sdekit: score-based generative modelling with SDEs, in one small readable core.

The public API::

    from sdekit import VPSDE, sample
    from sdekit.oracle import named_mixture

    gmm = named_mixture("ring8")
    sde = VPSDE()
    result = sample(gmm.score_fn(sde), sde, (1000, 2), sampler="pc", steps=500, seed=0)
"""

__version__ = "0.1.0"

from .api import SampleResult, run_on_grid, sample
from .errors import OptionError, PluginError, SdekitError, ShapeError, UnknownNameError
from .registry import Registry, load_registry
from .sde import SDE, SDES, ReverseSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "SDES", "OptionError", "PluginError", "Registry", "ReverseSDE", "SampleResult", "SdekitError",
           "ShapeError", "SubVPSDE", "UnknownNameError", "VESDE", "VPSDE", "__version__", "load_registry", "run_on_grid", "sample"]
