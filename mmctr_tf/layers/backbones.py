"""Sequence backbones: layers that turn (target, history, mask) id embeddings into a user-interest vector h.

Every backbone has the same interface, so plugin models (DMAE eq. 14, Diff-MSIN eq. 4) take any of them:
    call(target [B, dt], hist [B, L, dt], mask [B, L] bool, training) -> h [B, dh]
"""

from __future__ import annotations

import keras

from mmctr_tf.layers.attention import TargetAttention
from mmctr_tf.layers.baselines import GRUBackbone, MeanPoolingBackbone
from mmctr_tf.layers.bst import BSTBackbone
from mmctr_tf.layers.core import serializable


@serializable
class DINBackbone(keras.layers.Layer):
    """DIN (Zhou et al. 2018): h = sum_j a(v_i, v_j) v_j with the local activation unit (DMAE eq. 14)."""

    def __init__(self, att_units=(80, 40), att_activation: str = "dice", att_normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.att_units = tuple(att_units)
        self.att_activation = att_activation
        self.att_normalization = att_normalization
        self.attention = TargetAttention(self.att_units, att_activation, att_normalization, name="din_attention")

    def call(self, target, hist, mask, training=None):
        pooled, _ = self.attention(target, hist, mask, training=training)
        return pooled

    def attention_weights(self, target, hist, mask):
        return self.attention(target, hist, mask, training=False)[1]

    def get_config(self):
        return {**super().get_config(), "att_units": list(self.att_units), "att_activation": self.att_activation,
                "att_normalization": self.att_normalization}


BACKBONES = {"din": DINBackbone, "bst": BSTBackbone, "youtubenet": MeanPoolingBackbone, "gru4rec": GRUBackbone}


def make_backbone(name: str, **kwargs):
    if name not in BACKBONES:
        raise ValueError(f"unknown --backbone '{name}' (choose one of {', '.join(sorted(BACKBONES))})")
    import inspect

    accepted = inspect.signature(BACKBONES[name].__init__).parameters
    return BACKBONES[name](**{k: v for k, v in kwargs.items() if k in accepted}, name=f"backbone_{name}")
