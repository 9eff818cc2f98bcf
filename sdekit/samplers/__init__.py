"""Built-in samplers, one module each, registered through the plugin hook.

Import :class:`SamplerSpec`, :func:`option` and the helpers from here to write
a sampler plugin.
"""

from .base import (API_VERSION, DENOISE_CHOICES, DENOISE_HELP, GeneratorNoise, NoOptions, PerItemNoise,
                   SamplerSpec, build_options, finish, option)

#: Modules registered as built-in plugins, in listing order.
BUILTIN_MODULES = (
    "sdekit.samplers.ancestral",
    "sdekit.samplers.ddim",
    "sdekit.samplers.euler_maruyama",
    "sdekit.samplers.reverse_diffusion",
    "sdekit.samplers.langevin",
    "sdekit.samplers.ald",
    "sdekit.samplers.pc",
    "sdekit.samplers.ode",
    "sdekit.samplers.heun",
    "sdekit.samplers.dpm_solver",
    "sdekit.samplers.dpm_solver_sde",
    "sdekit.samplers.sde",
)

__all__ = ["API_VERSION", "BUILTIN_MODULES", "DENOISE_CHOICES", "DENOISE_HELP", "GeneratorNoise", "NoOptions",
           "PerItemNoise", "SamplerSpec", "build_options", "finish", "option"]
