"""sdekit: score-based generative modelling with SDEs, in one small readable core.

The public API::

    from sdekit import VPSDE, sample
    from sdekit.oracle import named_mixture

    gmm = named_mixture("ring8")
    sde = VPSDE()
    result = sample(gmm.score_fn(sde), sde, (1000, 2), sampler="pc", steps=500, seed=0)
    nll = -log_likelihood(sde, gmm.score_fn(sde), result.samples).log_likelihood.mean()
"""

__version__ = "0.1.0"

from .api import SampleResult, run_on_grid, sample
from .errors import OptionError, PluginError, SdekitError, ShapeError, UnknownNameError
from .likelihood import LikelihoodResult, bits_per_dim, elbo, log_likelihood
from .registry import Registry, load_registry
from .sde import SDE, SDES, ReverseSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "SDES", "LikelihoodResult", "OptionError", "PluginError", "Registry", "ReverseSDE", "SampleResult",
           "SdekitError", "ShapeError", "SubVPSDE", "UnknownNameError", "VESDE", "VPSDE", "__version__", "bits_per_dim",
           "elbo", "load_registry", "log_likelihood", "run_on_grid", "sample"]
