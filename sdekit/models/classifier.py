"""Noise-aware classifiers p_t(y | x_t) for classifier guidance (Dhariwal and Nichol 2021, sec. 4.1).

Built by ``build_model(replace(config, arch="classifier"), item_shape)``: the
U-Net's encoder half for images (B, C, H, W), the MLP's trunk for anything
else, both taking the same noise input ``c_noise`` as the score networks and
returning logits (B, num_classes). A classifier predicts ``y``, so it takes
none (passing one is an :class:`~sdekit.errors.OptionError`); it may be
conditioned on ``context`` (``context_dim > 0``). For
:func:`sdekit.guidance.classifier_guidance`, wrap it with
:func:`sdekit.models.network_classifier_fn`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from .layers import Conditioning, ResBlock, num_groups
from .mlp import MLP
from .unet import check_image, encoder


def _reject_labels(y, who: str) -> None:
    if y is not None:
        raise OptionError(f"{who} predicts the class y (logits over num_classes) and takes no y: "
                          f"call it as net(x, c_noise) (context=... if it has context_dim > 0)")


def _trunk_config(config, arch: str):
    # the trunk is a score network without label input; num_classes sizes the head instead
    return dataclasses.replace(config, arch=arch, num_classes=0)


class ImageClassifier(nn.Module):
    """U-Net encoder, one middle ResBlock with attention, GroupNorm-SiLU, global average pool, linear head."""

    def __init__(self, config, item_shape: tuple[int, int, int]):
        super().__init__()
        self.config, self.item_shape = config, tuple(item_shape)
        channels, height, _ = item_shape
        emb_dim = 4 * config.channels
        self.cond = Conditioning(config.channels, emb_dim, embedding=config.embedding,
                                 fourier_scale=config.fourier_scale, context_dim=config.context_dim,
                                 owner="ImageClassifier")
        self.conv_in, self.down, _, ch = encoder(config, channels, height, emb_dim)
        self.mid = ResBlock(ch, ch, emb_dim, dropout=config.dropout, skip_scale=config.skip_scale,
                            attention=True, num_heads=config.num_heads)
        self.norm_out = nn.GroupNorm(num_groups(ch), ch)
        self.head = nn.Linear(ch, config.num_classes)

    def forward(self, x, c_noise, y=None, context=None, cond_drop=None) -> torch.Tensor:
        _reject_labels(y, "ImageClassifier")
        check_image(x, self.item_shape[0], len(self.config.channel_mult), "ImageClassifier")
        emb = self.cond(c_noise, None, context, cond_drop, batch=x.shape[0])
        h = self.conv_in(x)
        for block in self.down:
            h = block(h, emb)
        h = self.mid(h, emb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


class VectorClassifier(MLP):
    """The MLP's trunk with a linear head of ``num_classes`` logits (default init)."""

    def __init__(self, config, item_shape: tuple[int, ...]):
        super().__init__(_trunk_config(config, "mlp"), item_shape)
        self.config = config
        self.out = nn.Linear(config.hidden, config.num_classes)

    def forward(self, x, c_noise, y=None, context=None, cond_drop=None) -> torch.Tensor:
        _reject_labels(y, "VectorClassifier")
        return self.out(self.trunk(x, c_noise, None, context, cond_drop))
