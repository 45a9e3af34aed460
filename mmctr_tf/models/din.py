"""DIN (Zhou et al., KDD 2018) and the naive multimodal concatenation baseline."""

from __future__ import annotations

import tensorflow as tf

from mmctr_tf.layers.attention import TargetAttention
from mmctr_tf.layers.backbones import make_backbone
from mmctr_tf.layers.core import MLP, serializable
from mmctr_tf.models.base import CTRModel


@serializable
class DIN(CTRModel):
    """p = sigmoid(MLP([v_u ; v_i ; h])) with h from a sequence backbone (DIN attention by default).

    Args beyond CTRModel: backbone (name), att_units, att_activation (dice | prelu | sigmoid),
    att_normalization (none | softmax), dnn_units (200-80 public, 512-256-64 industrial), dnn_activation, dropout.
    """

    def __init__(self, schema, backbone: str = "din", att_units=(80, 40), att_activation: str = "dice",
                 att_normalization: str = "none", dnn_units=(200, 80), dnn_activation: str = "dice",
                 dropout: float = 0.0, **kwargs):
        super().__init__(schema, **kwargs)
        self.backbone_name = backbone
        self.att_units, self.att_activation = tuple(att_units), att_activation
        self.att_normalization = att_normalization
        self.dnn_units, self.dnn_activation, self.dropout = tuple(dnn_units), dnn_activation, float(dropout)
        self.backbone = make_backbone(backbone, att_units=att_units, att_activation=att_activation,
                                      att_normalization=att_normalization, seq_len=self.schema.seq_len,
                                      dropout=dropout)
        self.dnn = MLP(self.dnn_units, dnn_activation, dropout, output_units=1, name="dnn")

    def interest(self, feats, training=None):
        return self.backbone(feats["target"], feats["hist"], feats["mask"], training=training)

    def dnn_inputs(self, feats, training=None):
        return [feats["user"], feats["target"], self.interest(feats, training=training)]

    def score(self, feats, training=None):
        return self.dnn(tf.concat(self.dnn_inputs(feats, training=training), axis=-1), training=training)[:, 0]

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone_name, "att_units": list(self.att_units),
                "att_activation": self.att_activation, "att_normalization": self.att_normalization,
                "dnn_units": list(self.dnn_units), "dnn_activation": self.dnn_activation, "dropout": self.dropout}


@serializable
class MMConcat(DIN):
    """Naive multimodal baseline: DIN plus, per modality, the target's frozen vector and the target-attention-pooled
    history vectors, concatenated into the MLP input (early fusion, no cross-modal interaction)."""

    uses_modalities = True

    def __init__(self, schema, **kwargs):
        super().__init__(schema, **kwargs)
        self.mm_attention = {m: TargetAttention(self.att_units, self.att_activation, self.att_normalization,
                                                name=f"{m}_attention") for m in self.modalities}

    def dnn_inputs(self, feats, training=None):
        parts = super().dnn_inputs(feats, training=training)
        for m, (tv, hv, _, hp) in feats["vec"].items():
            pooled, _ = self.mm_attention[m](tv, hv, feats["mask"] & (hp > 0), training=training)
            parts += [tv, pooled]
        return parts
