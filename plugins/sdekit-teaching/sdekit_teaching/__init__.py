"""``teaching_euler``: the smallest whole sampler, written to be read.

Euler's method on the probability-flow ODE (Song et al. 2021, eq. 13)::

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)

run backwards in time over the grid sdekit hands us. It is deterministic: the
prior draw (made by sdekit before we are called) is its only randomness.
"""

from dataclasses import dataclass

from sdekit.hookspecs import hookimpl
from sdekit.samplers import SamplerSpec, option
from sdekit.utils import batch_times

__version__ = "0.1.0"


@dataclass(frozen=True)
class Options:
    # Every option needs a default, help text and (optionally) bounds: sdekit
    # validates user input against them and lists them in `sdekit samplers show`.
    scale: float = option(1.0, "multiplies each step (1 = Euler; teaching only)", gt=0.0)


def teaching_euler(sde, score_fn, x, grid, *, options, noise, callback=None):
    # `x` is the prior draw (B, ...); `grid` a float64 CPU tensor of times from T down to t_min.
    ode = sde.reverse(score_fn, probability_flow=True)  # the ODE's drift, derived from the SDE
    times = grid.tolist()  # plain floats: reading them costs no device synchronisation
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        t = batch_times(t_cur, x)  # a (B,) batch of times on x's device and dtype
        dt = t_next - t_cur  # negative: we integrate from T towards 0
        x = x + options.scale * ode.drift(x, t) * dt  # one Euler step: one score evaluation
        if callback is not None:
            callback(i, t_next, x)  # progress bars and user callbacks see every step
    return x  # same shape, device and dtype as the input; `noise` was never needed


# The spec is everything sdekit, its CLI and the conformance kit know about the sampler.
SPEC = SamplerSpec(
    name="teaching_euler", fn=teaching_euler, options=Options, kind="sampler",
    stochastic=False,  # the output depends on the prior draw only
    evals_per_step=1, recommended_steps=200,  # steps at which it reaches the quality bound
    summary="Euler on the probability-flow ODE (the sdekit-teaching example plugin)",
)


@hookimpl  # the hook sdekit calls on every plugin; register one spec per sampler
def sdekit_register_samplers(register):
    register(SPEC)
