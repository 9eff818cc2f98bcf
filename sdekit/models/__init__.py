"""Noise-conditional score networks, their configuration, and their adapter to the score contract.

Every network here has one signature::

    net(x, c_noise, y=None, context=None, cond_drop=None) -> tensor shaped like x

(the classifier returns logits (B, num_classes)). ``c_noise`` (B,) is the
network's noise input, computed from the time outside it by
:func:`noise_input`; ``y`` (B,) long class labels in [0, num_classes] (index
``num_classes`` is the learned null class) or ``None`` for the null class in
every row; ``context`` (B, context_dim) float (multi-hot attributes, any user
embedding) or ``None`` for the learned null context; ``cond_drop`` (B,) bool
replaces the rows' label and context by the null ones (label dropout for
classifier-free guidance). A network built with ``num_classes=0`` and
``context_dim=0`` is unconditional: passing it ``y``, ``context`` or
``cond_drop`` is an :class:`~sdekit.errors.OptionError`.

Typical use::

    config = ModelConfig()                          # the 8x8-digits U-Net
    net = build_model(config, (1, 8, 8))
    score_fn = network_score_fn(net, sde, config)   # score_fn(x, t, y=...) in sdekit's contract

``ModelConfig(arch="mlp")`` is the MLP for vectors (2-D toys, mixtures);
``ModelConfig(arch="classifier", num_classes=10)`` a noise-aware classifier for
classifier guidance (wrap it with :func:`network_classifier_fn`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import OptionError, ShapeError, UnknownNameError
from ..samplers.base import _check_bounds, _convert, option
from ..score import PARAMETRIZATIONS, score_from
from ..sde import SDE
from .classifier import ImageClassifier, VectorClassifier
from .mlp import MLP
from .unet import UNet

ARCHS = ("unet", "mlp", "classifier")
EMBEDDINGS = ("positional", "fourier")

#: noise input name -> what the network sees as c_noise
NOISE_INPUTS = {
    "t": "999 t / T: the DDPM step index, for positional features (DDPM++)",
    "log_sigma": "log sigma with sigma = exp(-log_snr(t) / 2) (EDM's sigma; NCSN++ on VE: Fourier features "
                 "of log sigma), clamped to [-20, 20]",
}
#: |log sigma| bound of the "log_sigma" noise input (VP's sigma is 0 at t = 0)
LOG_SIGMA_MAX = 20.0


@dataclass(frozen=True)
class ModelConfig:
    """The ``model`` section: which network, its size and conditioning, and how it is read.

    The defaults are the 8x8-digits U-Net: widths 24 and 48 at 8x8 and 4x4, attention at
    4x4, 425,905 parameters for (1, 8, 8); ``arch="mlp"`` with the defaults has 232,834 for (2,). Lists are
    taken as tuples, and CLI strings are converted (``"1,2,2"`` for a tuple);
    every value is checked against its field's bounds and choices, errors
    naming the key (``model.channels must be >= 1, got 0``).
    """

    arch: str = option("unet", "network: 'unet' for images (C, H, W), 'mlp' for vectors (any item, flattened), "
                               "'classifier' for a noise-aware classifier (U-Net encoder or MLP)", choices=ARCHS)
    channels: int = option(24, "U-Net base width: channels of the first level", ge=1)
    channel_mult: tuple[int, ...] = option((1, 2), "U-Net width multiplier per level; H and W must be "
                                                      "divisible by 2^(levels - 1)", ge=1)
    num_res_blocks: int = option(1, "U-Net residual blocks per level (the decoder has one more)", ge=1)
    attn_resolutions: tuple[int, ...] = option((4,), "U-Net feature-map heights with self-attention "
                                                     "(the middle always has it)", ge=1)
    num_heads: int = option(1, "attention heads (must divide the width where attention sits)", ge=1)
    dropout: float = option(0.1, "dropout in every residual block (DDPM++: 0.1)", ge=0.0, lt=1.0)
    skip_scale: float = option(1 / math.sqrt(2), "residual and attention outputs scaled by this "
                                                 "(NCSN++/DDPM++: 1/sqrt(2))", gt=0.0)
    embedding: str = option("positional", "features of c_noise: 'positional' (sinusoids, DDPM++) or 'fourier' "
                                          "(random Fourier features, NCSN++)", choices=EMBEDDINGS)
    fourier_scale: float = option(16.0, "std of the random Fourier frequencies (NCSN++: 16)", gt=0.0)
    hidden: int = option(128, "MLP width", ge=1)
    depth: int = option(3, "MLP residual blocks", ge=0)
    num_classes: int = option(0, "class labels y in [0, num_classes) plus a learned null class; 0: no labels "
                                 "(a classifier: its number of logits)", ge=0)
    context_dim: int = option(0, "width of the context vector (multi-hot attributes, an embedding); 0: none",
                              ge=0)
    parametrization: str = option("eps", "what the network predicts: 'eps', 'x0', 'v' or 'score'",
                                  choices=PARAMETRIZATIONS)
    noise_input: str = option("t", "c_noise from t: 't' (999 t, DDPM++) or 'log_sigma' (NCSN++/EDM)",
                              choices=tuple(NOISE_INPUTS))

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where, value = f"model.{f.name}", getattr(self, f.name)
            if hints[f.name] in (int, float, str, bool):
                value = _convert(value, hints[f.name], where)
                _check_bounds(value, f.metadata, where)
            else:  # tuple[int, ...]
                if isinstance(value, str):
                    value = [v for v in value.replace(" ", "").split(",") if v]
                if not isinstance(value, (tuple, list)):
                    raise OptionError(f"{where} must be a tuple of ints, got {value!r}")
                value = tuple(_convert(v, int, f"{where}[{i}]") for i, v in enumerate(value))
                for i, v in enumerate(value):
                    _check_bounds(v, f.metadata, f"{where}[{i}]")
            object.__setattr__(self, f.name, value)
        if not self.channel_mult:
            raise OptionError("model.channel_mult must have at least one level, got ()")
        if self.arch == "classifier" and self.num_classes < 1:
            raise OptionError("model.num_classes must be >= 1 for arch 'classifier' (its number of logits), got 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """A config from a mapping (a config file's ``model`` section); unknown keys are errors."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in valid:
                raise UnknownNameError("model option", key, valid)
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def build_model(config: ModelConfig, item_shape: tuple[int, ...]) -> nn.Module:
    """The network ``config`` names, for items of shape ``item_shape`` ((C, H, W) or (D,)).

    ``arch="classifier"`` gives an :class:`ImageClassifier` for (C, H, W) and a
    :class:`VectorClassifier` otherwise. Weights are drawn from the global
    generator: ``torch.manual_seed(s)`` first gives identical weights.
    """
    item_shape = tuple(int(s) for s in item_shape)
    if not item_shape or min(item_shape) < 1:
        raise ShapeError(f"item_shape must be a non-empty shape of positive sizes, got {item_shape}")
    image = len(item_shape) == 3
    if config.arch == "mlp":
        return MLP(config, item_shape)
    if config.arch == "unet" and not image:
        raise ShapeError(f"arch 'unet' needs images, item_shape (C, H, W); got {item_shape} "
                         f"(use arch 'mlp' for vectors)")
    if image:
        levels, (_, h, w) = len(config.channel_mult), item_shape
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ShapeError(f"item_shape {item_shape}: H and W must be divisible by {2 ** (levels - 1)} for "
                             f"{levels} levels (model.channel_mult={config.channel_mult})")
        for width in {config.channels * m for m in config.channel_mult}:
            if width % config.num_heads:
                raise OptionError(f"model.num_heads={config.num_heads} must divide every level's width "
                                  f"(channels * channel_mult: {width})")
    if config.arch == "unet":
        return UNet(config, item_shape)
    return ImageClassifier(config, item_shape) if image else VectorClassifier(config, item_shape)


def noise_input(sde: SDE, t: torch.Tensor, kind: str = "t") -> torch.Tensor:
    """The network's noise input c_noise (B,) at times ``t`` (B,), same dtype and device.

    - ``"t"``: 999 t / T, the discrete DDPM step index that DDPM++'s positional
      embedding was designed for (Song et al. 2021's continuous VP models).
    - ``"log_sigma"``: log sigma with EDM's sigma = s / m = exp(-log_snr(t) / 2)
      (Karras et al. 2022), defined for any sdekit SDE; on VE it is log sigma(t),
      NCSN++'s input to its Fourier features. Clamped to [-20, 20] so that t = 0
      on VP (sigma = 0) stays finite.
    """
    if kind == "t":
        return t * (999.0 / sde.T)
    if kind == "log_sigma":
        return (-0.5 * sde.log_snr(t)).clamp(-LOG_SIGMA_MAX, LOG_SIGMA_MAX)
    raise UnknownNameError("noise input", kind, NOISE_INPUTS)


def network_score_fn(net: Callable[..., torch.Tensor], sde: SDE, config: ModelConfig | None = None):
    """``score_fn(x, t, **cond)`` in sdekit's score contract from a network.

    Computes ``c_noise = noise_input(sde, t, config.noise_input)``, calls
    ``net(x, c_noise, **cond)`` (``cond``: y, context, cond_drop) and converts
    ``config.parametrization`` to the score with :func:`sdekit.score.score_from`.
    ``config`` defaults to ``net.config``.
    """
    config = config if config is not None else net.config
    kind = config.noise_input

    def model(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return net(x, noise_input(sde, t, kind), **cond)

    return score_from(model, sde, config.parametrization)


def network_classifier_fn(net: Callable[..., torch.Tensor], sde: SDE, config: ModelConfig | None = None):
    """``classifier(x, t, **cond) -> (B, num_classes)`` logits, as :mod:`sdekit.guidance` calls it."""
    config = config if config is not None else net.config
    kind = config.noise_input

    def classifier(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return net(x, noise_input(sde, t, kind), **cond)

    return classifier


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; buffers (Fourier frequencies) are not counted."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ARCHS", "EMBEDDINGS", "ImageClassifier", "MLP", "ModelConfig", "NOISE_INPUTS", "UNet",
           "VectorClassifier", "build_model", "count_parameters", "network_classifier_fn", "network_score_fn",
           "noise_input"]
