"""Gaussian mixtures with exact noised scores, densities and samples.

If x_0 ~ sum_k w_k N(mu_k, diag(sigma_k^2)), then under any linear SDE with
kernel x_t = m(t) x_0 + s(t) z the noised marginal is again a mixture::

    p_t = sum_k w_k N(m mu_k, diag(m^2 sigma_k^2 + s^2))

so its score, log-density and the class posterior p(k | x_t) are known in
closed form at every t. That is the ground truth of sdekit's tests, and a tool
for checking any sampler against the exact answer.

Items may have any shape; they are flattened to D = prod(item_shape) inside.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import OptionError, ShapeError, UnknownNameError
from .sde import SDE
from .utils import batch_times


class GaussianMixture:
    """A mixture of diagonal Gaussians.

    Args:
        weights: (K,) non-negative mixture weights (normalised here).
        means: (K, D) component means.
        stds: (K,) isotropic or (K, D) diagonal component standard deviations.
        item_shape: shape of one item, default ``(D,)``.
    """

    def __init__(self, weights, means, stds, item_shape: Sequence[int] | None = None):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        sd = torch.as_tensor(stds, dtype=torch.float64)
        if mu.ndim != 2:
            raise ShapeError(f"means must have shape (K, D), got {tuple(mu.shape)}")
        k, d = mu.shape
        if w.shape != (k,):
            raise ShapeError(f"weights must have shape ({k},) to match means, got {tuple(w.shape)}")
        if sd.shape == (k,):
            sd = sd[:, None].expand(k, d)
        if sd.shape != (k, d):
            raise ShapeError(f"stds must have shape ({k},) or ({k}, {d}), got {tuple(sd.shape)}")
        if (w < 0).any() or w.sum() <= 0 or (sd < 0).any():
            raise OptionError("mixture weights must be non-negative with a positive sum, and stds non-negative")
        self.weights = w / w.sum()
        self.means = mu
        self.stds = sd.contiguous()
        self.item_shape = tuple(item_shape) if item_shape is not None else (d,)
        if math.prod(self.item_shape) != d:
            raise ShapeError(f"item_shape {self.item_shape} does not hold D = {d} values")
        self._cast: dict = {}

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _params(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cast:  # cached per device/dtype: no transfer per call
            self._cast[key] = tuple(p.to(device=like.device, dtype=like.dtype)
                                    for p in (self.weights.log(), self.means, self.stds))
        return self._cast[key]

    def _noised(self, x: torch.Tensor, t, sde: SDE | None):
        """Flattened x (B, D), noised means (B, K, D) and variances (B, K, D)."""
        if tuple(x.shape[1:]) != self.item_shape:
            raise ShapeError(f"expected items of shape {self.item_shape}, got {tuple(x.shape[1:])}")
        xf = x.reshape(x.shape[0], -1)
        log_w, mu, sd = self._params(x)
        if sde is None:
            return xf, log_w, mu[None], (sd**2)[None]
        mean, std = (c.to(x.dtype)[:, None, None] for c in sde.marginal(batch_times(t, x)))
        return xf, log_w, mean * mu[None], mean**2 * sd[None] ** 2 + std**2

    def _component_log_probs(self, xf, mu_t, var_t):
        diff = xf[:, None, :] - mu_t
        return -0.5 * ((diff**2 / var_t) + var_t.log() + math.log(2 * math.pi)).sum(-1), diff

    def log_prob(self, x: torch.Tensor, t=None, sde: SDE | None = None) -> torch.Tensor:
        """log p_t(x), (B, ...) -> (B,). With ``sde=None``, the data density p_0."""
        xf, log_w, mu_t, var_t = self._noised(x, t, sde)
        comp, _ = self._component_log_probs(xf, mu_t, var_t)
        return torch.logsumexp(log_w + comp, dim=1)

    def posterior(self, x: torch.Tensor, t=None, sde: SDE | None = None) -> torch.Tensor:
        """p(k | x_t), (B, ...) -> (B, K): the ideal noise-aware classifier."""
        xf, log_w, mu_t, var_t = self._noised(x, t, sde)
        comp, _ = self._component_log_probs(xf, mu_t, var_t)
        return torch.softmax(log_w + comp, dim=1)

    def log_posterior(self, x: torch.Tensor, t=None, sde: SDE | None = None) -> torch.Tensor:
        """log p(k | x_t), (B, ...) -> (B, K), without underflow: differentiable in ``x``."""
        xf, log_w, mu_t, var_t = self._noised(x, t, sde)
        comp, _ = self._component_log_probs(xf, mu_t, var_t)
        return torch.log_softmax(log_w + comp, dim=1)

    def score(self, x: torch.Tensor, t=None, sde: SDE | None = None, y: torch.Tensor | None = None):
        """grad_x log p_t(x), or of p_t(x | k = y) when labels ``y`` (B,) are given."""
        xf, log_w, mu_t, var_t = self._noised(x, t, sde)
        comp, diff = self._component_log_probs(xf, mu_t, var_t)
        if y is None:
            resp = torch.softmax(log_w + comp, dim=1)
        else:
            resp = torch.nn.functional.one_hot(y.long().to(x.device), self.num_components).to(x.dtype)
        return (-(resp[:, :, None] * diff / var_t).sum(1)).reshape(x.shape)

    def score_fn(self, sde: SDE):
        """This mixture's exact score under ``sde`` in the score contract ``(x, t, **cond)``."""

        def score_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.score(x, t, sde, y=y)

        return score_fn

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64,
               device=None, return_labels: bool = False):
        """n exact draws from p_0, shape (n, *item_shape) (and their components)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[k] + self.stds[k] * z).reshape(n, *self.item_shape).to(device=device, dtype=dtype)
        return (x, k.to(device)) if return_labels else x

    def sample_t(self, n: int, t: float, sde: SDE, generator: torch.Generator | None = None, **kw):
        """n exact draws from the noised marginal p_t."""
        x0 = self.sample(n, generator, dtype=torch.float64)
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return sde.perturb(x0, torch.full((n,), float(t), dtype=torch.float64), z).to(**kw)

    def condition(self, mask, values) -> "GaussianMixture":
        """The exact law of the unknown coordinates given the known ones: p_0(x[~mask] | x[mask] = values).

        ``mask`` (bool, or 0/1; 1 = known) and ``values`` broadcast to the item
        shape (values where the mask is 0 are ignored). Component k's unknown
        part stays N(mu_k[u], diag sigma_k[u]^2) (the components are diagonal)
        and its weight becomes w_k N(values; mu_k[known], diag sigma_k[known]^2),
        renormalised (in log space). Returns a mixture with items (n_unknown,),
        in the item's flattened (C-order) coordinate order.
        """
        mask = torch.as_tensor(mask).to("cpu")
        values = torch.as_tensor(values).to("cpu", torch.float64)
        try:
            mask = (mask != 0).expand(self.item_shape).reshape(-1)
            values = values.expand(self.item_shape).reshape(-1)
        except RuntimeError:
            raise ShapeError(f"condition: mask {tuple(mask.shape)} and values {tuple(values.shape)} must "
                             f"broadcast to the item shape {self.item_shape}") from None
        if bool(mask.all()) or not bool(mask.any()):
            raise OptionError("condition: the mask must mark some coordinates known and some unknown")
        mu, sd = self.means[:, mask], self.stds[:, mask]
        log_lik = -0.5 * (((values[mask] - mu) / sd) ** 2 + 2 * sd.log() + math.log(2 * math.pi)).sum(1)
        weights = torch.softmax(self.weights.log() + log_lik, dim=0)
        return GaussianMixture(weights, self.means[:, ~mask], self.stds[:, ~mask])

    def transform(self, matrix) -> "GaussianMixture":
        """The law of M x for an orthogonal (D, D) ``matrix`` M acting on flattened items.

        Exact for components with isotropic stds (N(M mu_k, sigma_k^2 I));
        others raise OptionError. Keeps the item shape. For a (C, C) matrix Q
        applied along the channels of (C, H, W) items, M = kron(Q, I_{HW}).
        """
        m = torch.as_tensor(matrix, dtype=torch.float64)
        if m.shape != (self.dim, self.dim):
            raise ShapeError(f"transform needs a ({self.dim}, {self.dim}) matrix, got {tuple(m.shape)}")
        if not torch.allclose(m @ m.T, torch.eye(self.dim, dtype=torch.float64), atol=1e-10):
            raise OptionError("transform needs an orthogonal matrix (M M^T = I)")
        if not bool((self.stds == self.stds[:, :1]).all()):
            raise OptionError("transform is exact only for components with isotropic stds")
        return GaussianMixture(self.weights, self.means @ m.T, self.stds, self.item_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, item_shape={self.item_shape})"


# -- named mixtures ------------------------------------------------------------------

def ring(components: int = 8, radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Equal-weight components evenly spaced on a circle in 2-D."""
    angle = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(torch.ones(components), means, torch.full((components,), std))


def grid(side: int = 3, spacing: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Equal-weight components on a side x side lattice in 2-D, centred at 0."""
    axis = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(axis, axis)
    return GaussianMixture(torch.ones(side * side), means, torch.full((side * side,), std))


def random(dim: int = 16, components: int = 8, seed: int = 0, scale: float = 2.0) -> GaussianMixture:
    """A seeded random mixture in any dimension: unequal weights (0.5-1.5 before
    normalisation), means N(0, scale^2 I), diagonal stds uniform in [0.3, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    means = scale * torch.randn(components, dim, generator=g, dtype=torch.float64)
    stds = 0.3 + 0.5 * torch.rand(components, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds)


def image(channels: int = 3, size: int = 4, components: int = 8, seed: int = 0) -> GaussianMixture:
    """A seeded mixture of tiny images (channels, size, size), values roughly in [-1, 1].

    Components come in pairs that share a gray pattern (the channel mean of
    the mean, uniform in [-0.5, 0.5]) and a std, and differ in color (zero
    channel mean, entries within +-0.47): a gray image has two plausible
    colorings. Weights 0.5-1.5 before normalisation; stds isotropic, uniform
    in [0.08, 0.15], so :meth:`GaussianMixture.transform` by a channel
    rotation is exact.
    """
    g = torch.Generator().manual_seed(seed)
    pairs = (components + 1) // 2
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    gray = torch.rand(pairs, 1, size, size, generator=g, dtype=torch.float64) - 0.5
    color = 0.7 * (torch.rand(components, channels, size, size, generator=g, dtype=torch.float64) - 0.5)
    color -= color.mean(dim=1, keepdim=True)
    pair = torch.arange(components) // 2
    means = (gray[pair] + color).reshape(components, -1)
    stds = (0.08 + 0.07 * torch.rand(pairs, generator=g, dtype=torch.float64))[pair]
    return GaussianMixture(weights, means, stds, item_shape=(channels, size, size))


MIXTURES = {
    "ring8": lambda **kw: ring(8, **kw),
    "grid9": lambda **kw: grid(3, **kw),
    "random": random,
    "image": image,
}


def named_mixture(spec: str) -> GaussianMixture:
    """A built-in mixture from ``NAME`` or ``NAME:key=value,...``.

    Examples: ``ring8``, ``grid9``, ``random:dim=16,components=8,seed=0``,
    ``image:channels=3,size=4,components=8,seed=0``.
    """
    name, _, args = spec.partition(":")
    if name not in MIXTURES:
        raise UnknownNameError("mixture", name, MIXTURES)
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise OptionError(f"mixture argument {item!r} must look like key=value")
        try:
            kwargs[key.strip()] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            raise OptionError(f"mixture argument {key.strip()!r} must be a number, got {value!r}") from None
    try:
        return MIXTURES[name](**kwargs)
    except TypeError as err:
        raise OptionError(f"bad arguments for mixture {name!r}: {err}") from None
