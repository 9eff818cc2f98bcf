"""An MLP score network for vectors (2-D toys, Gaussian mixtures, any flattened item)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conditioning, MLPBlock, check_input


class MLP(nn.Module):
    """Noise-conditional residual MLP: ``forward(x, c_noise, y=None, context=None, cond_drop=None)``.

    ``x`` (B, *item_shape) is flattened to (B, D), D = prod(item_shape), mapped
    to ``hidden`` features, run through ``depth`` :class:`MLPBlock` s (each
    conditioned on the noise/label/context embedding of width ``hidden``) and
    back to (B, *item_shape) by a zero-initialised linear layer.
    """

    def __init__(self, config, item_shape: tuple[int, ...]):
        super().__init__()
        self.config, self.item_shape = config, tuple(item_shape)
        dim, width = math.prod(item_shape), config.hidden
        self.cond = Conditioning(width, width, embedding=config.embedding, fourier_scale=config.fourier_scale,
                                 num_classes=config.num_classes, context_dim=config.context_dim,
                                 owner=type(self).__name__)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, width, dropout=config.dropout, skip_scale=config.skip_scale)
                                    for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def trunk(self, x, c_noise, y=None, context=None, cond_drop=None) -> torch.Tensor:
        """Features (B, hidden) after the blocks (shared with the vector classifier)."""
        check_input(x, self.item_shape, type(self).__name__)
        emb = self.cond(c_noise, y, context, cond_drop, batch=x.shape[0])
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        return F.silu(self.norm_out(h))

    def forward(self, x, c_noise, y=None, context=None, cond_drop=None) -> torch.Tensor:
        return self.out(self.trunk(x, c_noise, y, context, cond_drop)).reshape(x.shape)
