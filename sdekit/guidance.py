"""Guidance: steer sampling toward a class by wrapping the score function.

Both wrappers take a score function in the contract of :mod:`sdekit.score` and
return one, ``guided(x, t, **cond)``, that reads the label from ``cond[key]``
(``key="y"`` by default). Every sampler only ever calls ``score_fn(x, t, **cond)``,
so guidance composes with every sampler, predictor, corrector and solver,
built-in or plugin, and none of them knows it is guided::

    guided = classifier_free_guidance(net_score, 3.0, convention="s", null=num_classes)
    sdekit.sample(guided, sde, shape, "ddim", cond={"y": labels})

**Classifier guidance** (Dhariwal and Nichol 2021, sec. 4.1; the conditional
reverse SDE of Song et al. 2021, sec. 5) adds the gradient of a noise-aware
classifier ``log p_t(y | x)`` to the unconditional score::

    guided = grad log p_t(x) + scale * grad_x log p_t(y | x)

By Bayes' rule grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), so
``scale = 1`` with the exact classifier is the exact conditional score, and
``scale = 0`` the unconditional one.

**Classifier-free guidance** (Ho and Salimans 2022, eq. 6) takes the
conditional and unconditional scores of one model (trained with the label
dropped to a null token) and extrapolates; with exact scores their difference
is the implicit classifier's gradient grad log p_t(y | x), so CFG at scale
``s`` equals classifier guidance at scale ``s``. Its scale comes in two
conventions, and the caller must say which (``convention`` has no default):

=======================  ==============================  ==================================
                         ``convention="s"``              ``convention="w"``
=======================  ==============================  ==================================
guided score             uncond + s (cond - uncond)      (1 + w) cond - w uncond
unconditional            s = 0                           w = -1
conditional              s = 1                           w = 0
stronger guidance        s > 1                           w > 0
used by                  diffusers' ``guidance_scale``,  Ho and Salimans 2022
                         Dhariwal and Nichol's scale
=======================  ==============================  ==================================

so ``s = 1 + w``. At scales other than the unconditional and conditional ones
the guided score is in general not the score of any noised distribution (not
of the noised p(x) p(y | x)^s either; see Bradley and Nakkiran 2024): samples
concentrate on the class, as ``tests/test_guidance.py`` measures, but are no
exact draws of a named distribution.

Where the guided score equals one of the model's scores (CFG at s = 0 or 1,
classifier guidance at scale 0) the wrappers return that score from a single
evaluation, bitwise; otherwise CFG evaluates both in one batched call of 2B
items when the null condition is a value (a network's null class), and in two
calls when it is ``None`` (the key left out, as for the exact
:class:`~sdekit.oracle.GaussianMixture` oracle).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

import torch

from .errors import OptionError, ShapeError
from .oracle import GaussianMixture
from .sde import SDE

ScoreFn = Callable[..., torch.Tensor]
Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: CFG scale conventions: name -> (meaning, unconditional value, conditional value)
CONVENTIONS = {
    "s": ("guided = uncond + s (cond - uncond), as diffusers' guidance_scale", 0.0, 1.0),
    "w": ("guided = (1 + w) cond - w uncond, as Ho and Salimans 2022", -1.0, 0.0),
}


def classifier_guidance(score_fn: ScoreFn, classifier: Classifier, scale: float, *, key: str = "y") -> ScoreFn:
    """Classifier guidance: ``score_fn(x, t, **rest) + scale * grad_x log p(y | x, t)``.

    Args:
        score_fn: the *unconditional* score, ``score_fn(x, t, **cond)``. It is
            called without ``key`` (the other conditioning is passed on); to use
            a network's null class as its unconditional score, bind it yourself:
            ``lambda x, t, **c: net_score(x, t, y=null, **c)``.
        classifier: a noise-aware classifier ``classifier(x, t) -> (B, K)``
            logits or log-probabilities (log_softmax is applied, which leaves
            log-probabilities unchanged), treating items independently.
        scale: the guidance scale, any finite number: 0 unconditional (the
            classifier is not called), 1 conditional (with the exact classifier),
            more than 1 concentrates on the class.
        key: the conditioning key holding the labels: a (B,) integer tensor or one int.

    The gradient is taken by autograd (with grad enabled inside, since sampling
    runs under ``torch.no_grad``) on ``x``'s device and dtype, and detached;
    when the caller differentiates through ``x`` itself, it keeps the graph.
    The returned function carries ``guidance``, a JSON-ready description.
    """
    scale = _finite(scale, "classifier guidance scale")

    def guided(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        labels, rest = _split(cond, key, "classifier guidance")
        score = score_fn(x, t, **rest)
        if scale == 0.0:
            return score
        return score + scale * classifier_grad(classifier, x, t, labels)

    guided.guidance = {"kind": "classifier", "scale": scale, "key": key}
    return guided


def classifier_free_guidance(score_fn: ScoreFn, scale: float, *, convention: str, null: Any = None,
                             key: str = "y") -> ScoreFn:
    """Classifier-free guidance from one conditional model (Ho and Salimans 2022).

    Args:
        score_fn: ``score_fn(x, t, **cond)``, conditional on ``cond[key]``.
        scale: ``s`` or ``w`` as ``convention`` says (module docstring), any finite number.
        convention: ``"s"`` (guided = uncond + s (cond - uncond); s = 0
            unconditional, s = 1 conditional) or ``"w"`` (guided = (1 + w) cond
            - w uncond; w = -1 unconditional, w = 0 conditional). Required.
        null: the value of ``key`` that means "no condition": ``None`` leaves the
            key out of the unconditional call (the oracle's ``y=None``); a
            network's null class index (or null embedding) is repeated over the
            batch, and the two scores come from one call of 2B items.
        key: the conditioning key holding the labels: a (B, ...) tensor (one int
            is repeated over the batch in the batched call).

    At the unconditional and conditional scales the guided score *is* that
    score: one evaluation, bitwise equal to sampling without guidance.
    """
    if convention not in CONVENTIONS:
        choices = "; ".join(f"{name!r}: {text}" for name, (text, *_) in CONVENTIONS.items())
        raise OptionError(f"unknown classifier-free guidance convention {convention!r}: choose {choices}")
    scale = _finite(scale, f"classifier-free guidance scale {convention}")
    s = scale if convention == "s" else 1.0 + scale  # s = 1 + w

    def guided(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        labels, rest = _split(cond, key, "classifier-free guidance")
        if s == 1.0:  # exactly the conditional score
            return score_fn(x, t, **cond)
        if null is None:
            uncond = score_fn(x, t, **rest)
            if s == 0.0:
                return uncond
            conditional = score_fn(x, t, **cond)
        else:
            b = x.shape[0]
            labels = _batch_of(labels, b, None, x.device)
            nulls = _batch_of(null, b, labels, labels.device)
            if nulls.shape != labels.shape:
                raise ShapeError(f"the null condition {key}={null!r} gives shape {tuple(nulls.shape)}, "
                                 f"but the labels have shape {tuple(labels.shape)}")
            if s == 0.0:
                return score_fn(x, t, **rest, **{key: nulls})
            # one model call of 2B items: [conditional; unconditional]
            both = score_fn(torch.cat([x, x]), torch.cat([t, t]), **_twice(rest, b),
                            **{key: torch.cat([labels, nulls])})
            conditional, uncond = both[:b], both[b:]
        return uncond + s * (conditional - uncond)

    guided.guidance = {"kind": "cfg", "scale": scale, "convention": convention, "key": key,
                       "null": null if null is None or isinstance(null, (int, float)) else type(null).__name__}
    return guided


def classifier_grad(classifier: Classifier, x: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
    """grad_x log p(y | x, t) of ``classifier(x, t)`` (logits or log-probabilities), shaped like ``x``.

    Items are independent, so the gradient of the batch's summed log-probability
    is each item's own gradient.
    """
    y = _batch_of(labels, x.shape[0], None, x.device).to(x.device).long()
    keep_graph = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xg = x if keep_graph else x.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(xg, t), dim=-1)
        if log_p.ndim != 2 or log_p.shape[0] != x.shape[0] or y.ndim != 1:
            raise ShapeError(f"classifier guidance needs (B,) labels and classifier(x, t) of shape (B, K) with "
                             f"B = {x.shape[0]}; got labels {tuple(y.shape)}, classifier {tuple(log_p.shape)}")
        if bool(((y < 0) | (y >= log_p.shape[1])).any()):
            raise OptionError(f"class labels must lie in [0, {log_p.shape[1] - 1}] for a classifier of "
                              f"{log_p.shape[1]} classes")
        (grad,) = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), xg, create_graph=keep_graph)
    return grad


def oracle_classifier(gmm: GaussianMixture, sde: SDE) -> Classifier:
    """The exact noise-aware classifier of a mixture: ``classifier(x, t) = log p(k | x_t)``, (B, K)."""

    def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gmm.log_posterior(x, t, sde)

    return classifier


# -- helpers ---------------------------------------------------------------------------

def _finite(scale, what: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise OptionError(f"{what} must be a finite number, got {scale!r}")
    return float(scale)


def _split(cond: Mapping[str, Any], key: str, what: str):
    """The labels ``cond[key]`` and the rest of ``cond``; a clear error when there are none."""
    if cond.get(key) is None:
        raise OptionError(f"{what} needs the class labels: pass cond={{{key!r}: labels}} (a (B,) tensor of "
                          f"class indices) to sdekit.sample or to the score function; got "
                          f"{'no conditioning' if not cond else 'only ' + ', '.join(map(repr, cond))}")
    return cond[key], {k: v for k, v in cond.items() if k != key}


def _batch_of(value, b: int, like: torch.Tensor | None, device) -> torch.Tensor:
    """``value`` as a tensor with batch dim ``b``: a per-item tensor as is, one value repeated."""
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=None if like is None else like.dtype, device=device)
    return value if value.ndim >= 1 and value.shape[0] == b else value.expand(b, *value.shape)


def _twice(cond: Mapping[str, Any], b: int) -> dict:
    """Other conditioning for the 2B batch: per-item tensors repeated, anything else passed whole."""
    return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == b else v
            for k, v in cond.items()}
