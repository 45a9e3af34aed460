"""Baseline models (issue #7): LR, FM, DeepFM, Wide&Deep, YouTubeNet, GRU4Rec, BST and DIN + SimTier.

All take the inputs of every model (CTRModel: user, target item fields, history of item fields, hist_len) and
share its id embeddings, input normalisation and masking; all return the click probability [B].

  lr          sigmoid(w_0 + w_u + sum_f w_f(target) + sum_f mean_{valid j} w_f(hist_j))
  fm          sigmoid(linear + FM2({v_u, v_f(target), mean_j v_f(hist_j)}))               Rendle 2010, eq. (1)
  deepfm      sigmoid(linear + FM2(fields) + MLP(concat(fields)))                          Guo et al. 2017, eq. (1)
  wide_deep   sigmoid(linear + MLP(concat(fields)))                                        Cheng et al. 2016, eq. (3)
  youtubenet  sigmoid(MLP([v_u ; v_i ; mean_j v_j]))                                       Covington et al. 2016
  gru4rec     sigmoid(MLP([v_u ; v_i ; GRU(v_1..v_hist_len)]))                             Hidasi et al. 2016
  bst         sigmoid(MLP([v_u ; v_i ; BST(v_i, hist)]))  = DIN with --backbone=bst        Chen et al. 2019
  simtier     sigmoid(MLP([v_u ; v_i ; DIN(h) ; SimTier_m ...]))  DIN + SimTier per modality  Sheng et al. 2024

"linear" is `LinearTerm` (one scalar weight per id; the history is a normalised multi-hot field sharing the
target field's weights); "fields" are the user embedding, one embedding per target field and the mean-pooled
history embedding per history field, so FM/DeepFM/Wide&Deep see the history the way YouTubeNet does.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from mmctr_tf.layers.backbones import make_backbone
from mmctr_tf.layers.baselines import FMInteraction, LinearTerm, SimTier
from mmctr_tf.layers.core import MLP, masked_mean, serializable
from mmctr_tf.models.base import CTRModel
from mmctr_tf.models.din import DIN


def field_embeddings(model: CTRModel, feats) -> tf.Tensor:
    """[B, 1 + 2F, d]: v_u, the F target field embeddings, the F mean-pooled history field embeddings."""
    F, d = len(model.schema.item_features), model.emb_dim
    target = tf.reshape(feats["target"], [-1, F, d])
    hist = tf.reshape(masked_mean(feats["hist"], feats["mask"]), [-1, F, d])
    return tf.concat([feats["user"][:, None, :], target, hist], axis=1)


def linear_inputs(feats):
    """(target-side ids {field: [B]}, history ids {field: [B, L]}) for `LinearTerm`."""
    ids = feats["ids"]
    target = {n: ids[n] for n in ids if n != "hist_len" and not n.startswith("hist_")}
    hist = {n[5:]: ids[n] for n in ids if n.startswith("hist_") and n != "hist_len"}
    return target, hist


@serializable
class LR(CTRModel):
    """Logistic regression over one-hot ids (the classic CTR baseline):

        logit = w_0 + w_u + sum_f w_f(target_f) + sum_f mean_{valid j} w_f(hist_f,j)

    Its weights are the CTRModel id embeddings at width 1 (history ids share the target field's weights, as
    embeddings do in every model here); `emb_l2` is then an L2 penalty on the weights used. `emb_dim` is fixed to
    1, so the flag validation refuses --emb_dim for lr (`fixed_hparams`).
    """

    fixed_hparams = ("emb_dim",)

    def __init__(self, schema, **kwargs):
        emb_dim = kwargs.pop("emb_dim", 1)  # from_config passes the fixed value back
        if int(emb_dim) != 1:
            raise ValueError(f"lr: logistic regression has one weight per id (emb_dim=1), got emb_dim={emb_dim}")
        super().__init__(schema, emb_dim=1, **kwargs)
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")

    def score(self, feats, training=None):
        hist = masked_mean(feats["hist"], feats["mask"])  # [B, F]
        return (self.bias + feats["user"][:, 0] + tf.reduce_sum(feats["target"], axis=-1)
                + tf.reduce_sum(hist, axis=-1))


@serializable
class FM(CTRModel):
    """Factorization machine (Rendle, ICDM 2010, eq. (1)): first-order `LinearTerm` plus the pairwise interactions
    <v_i, v_j> of all fields (`FMInteraction`, eq. (5)); fields = user, target item fields, mean-pooled history
    fields (see `field_embeddings`)."""

    def __init__(self, schema, **kwargs):
        super().__init__(schema, **kwargs)
        self.linear = LinearTerm({n: self.schema.vocab_of(n) for n in ["user_id"] + self.schema.item_features},
                                 name="linear")
        self.fm = FMInteraction(name="fm")

    def score(self, feats, training=None):
        return self.linear(*linear_inputs(feats), feats["mask"]) + self.fm(field_embeddings(self, feats))


@serializable
class DeepFM(FM):
    """DeepFM (Guo et al., IJCAI 2017, eq. (1)): y = sigmoid(y_FM + y_DNN), the FM and the MLP sharing the field
    embeddings; the MLP reads their concatenation (eq. (3)-(5))."""

    def __init__(self, schema, dnn_units=(200, 80), dnn_activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(schema, **kwargs)
        self.dnn_units, self.dnn_activation, self.dropout = tuple(dnn_units), dnn_activation, float(dropout)
        self.dnn = MLP(self.dnn_units, dnn_activation, dropout, output_units=1, name="dnn")

    def score(self, feats, training=None):
        fields = field_embeddings(self, feats)
        deep = self.dnn(tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]]), training=training)[:, 0]
        return self.linear(*linear_inputs(feats), feats["mask"]) + self.fm(fields) + deep

    def get_config(self):
        return {**super().get_config(), "dnn_units": list(self.dnn_units), "dnn_activation": self.dnn_activation,
                "dropout": self.dropout}


@serializable
class WideDeep(CTRModel):
    """Wide & Deep (Cheng et al., DLRS 2016, eq. (3)): P = sigmoid(w_wide^T x + w_deep^T a_final + b). Wide part:
    `LinearTerm` over the one-hot ids (no hand-made cross-product features: the datasets here have none); deep
    part: MLP over the concatenated field embeddings (user, target fields, mean-pooled history fields)."""

    def __init__(self, schema, dnn_units=(200, 80), dnn_activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(schema, **kwargs)
        self.dnn_units, self.dnn_activation, self.dropout = tuple(dnn_units), dnn_activation, float(dropout)
        self.linear = LinearTerm({n: self.schema.vocab_of(n) for n in ["user_id"] + self.schema.item_features},
                                 name="linear")
        self.dnn = MLP(self.dnn_units, dnn_activation, dropout, output_units=1, name="dnn")

    def score(self, feats, training=None):
        fields = field_embeddings(self, feats)
        deep = self.dnn(tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]]), training=training)[:, 0]
        return self.linear(*linear_inputs(feats), feats["mask"]) + deep

    def get_config(self):
        return {**super().get_config(), "dnn_units": list(self.dnn_units), "dnn_activation": self.dnn_activation,
                "dropout": self.dropout}


class SequenceMLP(CTRModel):
    """p = sigmoid(MLP([v_u ; v_i ; h])) with h from a fixed sequence backbone (`backbone_kind`); the shared body of
    YouTubeNet, GRU4Rec and BST. Not registered as a model itself."""

    backbone_kind = ""

    def __init__(self, schema, dnn_units=(200, 80), dnn_activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(schema, **kwargs)
        self.dnn_units, self.dnn_activation, self.dropout = tuple(dnn_units), dnn_activation, float(dropout)
        self.backbone = make_backbone(self.backbone_kind, seq_len=self.schema.seq_len, **self.backbone_args())
        self.dnn = MLP(self.dnn_units, dnn_activation, dropout, output_units=1, name="dnn")

    def backbone_args(self) -> dict:
        return {}

    def score(self, feats, training=None):
        h = self.backbone(feats["target"], feats["hist"], feats["mask"], training=training)
        x = tf.concat([feats["user"], feats["target"], h], axis=-1)
        return self.dnn(x, training=training)[:, 0]

    def get_config(self):
        return {**super().get_config(), "dnn_units": list(self.dnn_units), "dnn_activation": self.dnn_activation,
                "dropout": self.dropout}


@serializable
class YouTubeNet(SequenceMLP):
    """YouTube DNN ranking (Covington et al., RecSys 2016, §3-4): the history is the average of its id embeddings
    (`MeanPoolingBackbone`, valid slots only), concatenated with the user and target embeddings into a ReLU
    tower."""

    backbone_kind = "youtubenet"


@serializable
class GRU4Rec(SequenceMLP):
    """GRU4Rec (Hidasi et al., ICLR 2016) as a CTR baseline: a masked GRU over the history; its hidden state after
    the last valid behaviour is the user interest, concatenated with the user and target embeddings into the MLP
    (`GRUBackbone`). `gru_units`: hidden size (default: the width of the history embeddings)."""

    backbone_kind = "gru4rec"

    def __init__(self, schema, gru_units: Optional[int] = None, **kwargs):
        self.gru_units = None if gru_units is None else int(gru_units)
        super().__init__(schema, **kwargs)

    def backbone_args(self) -> dict:
        return {"gru_units": self.gru_units}

    def get_config(self):
        return {**super().get_config(), "gru_units": self.gru_units}


@serializable
class BST(SequenceMLP):
    """BST (Chen et al., DLP-KDD 2019): the transformer backbone (`BSTBackbone`) over [history ; target], its
    output concatenated with the user and target embeddings into the MLP. The same network as
    `--model=din --backbone=bst` (Dice MLP by default, as DIN), with the transformer's shape as flags:
    backbone_heads, backbone_blocks; `dropout` applies to the transformer and the MLP."""

    backbone_kind = "bst"

    def __init__(self, schema, backbone_heads: int = 2, backbone_blocks: int = 1, dnn_activation: str = "dice",
                 **kwargs):
        self.backbone_heads, self.backbone_blocks = int(backbone_heads), int(backbone_blocks)
        super().__init__(schema, dnn_activation=dnn_activation, **kwargs)

    def backbone_args(self) -> dict:
        return {"num_heads": self.backbone_heads, "num_blocks": self.backbone_blocks, "dropout": self.dropout}

    def get_config(self):
        return {**super().get_config(), "backbone_heads": self.backbone_heads,
                "backbone_blocks": self.backbone_blocks}


@serializable
class DINSimTier(DIN):
    """DIN + SimTier (Sheng et al., CIKM 2024; SPEC §6): DIN, plus per modality a `SimTier` histogram of the
    cosines between the target's and the valid history items' frozen vectors, flattened into the MLP input:

        p = sigmoid(MLP([v_u ; v_i ; DIN(h) ; SimTier_m1 ; SimTier_m2 ...]))

    A history slot is counted only if it is a real behaviour and its item has a vector of that modality; a target
    without a vector has no meaningful cosine, so its histogram is empty (all counts 0, feature 0).
    Args beyond DIN: simtier_eps (bin width, 0.1), simtier_dim (size of each bin's vector, 4); `modalities`.
    """

    uses_modalities = True

    def __init__(self, schema, simtier_eps: float = 0.1, simtier_dim: int = 4, **kwargs):
        super().__init__(schema, **kwargs)
        self.simtier_eps, self.simtier_dim = float(simtier_eps), int(simtier_dim)
        self.simtier = {m: SimTier(self.simtier_eps, self.simtier_dim, name=f"{m}_simtier") for m in self.modalities}

    def simtier_inputs(self, feats):
        """{modality: (target vector [B, dm], history vectors [B, L, dm], counted slots [B, L] bool)}."""
        out = {}
        for m in self.modalities:
            tv, hv, tp, hp = feats["vec"][m]
            out[m] = (tv, hv, feats["mask"] & (hp > 0) & (tp > 0)[:, None])
        return out

    def dnn_inputs(self, feats, training=None):
        parts = super().dnn_inputs(feats, training=training)
        for m, (tv, hv, valid) in self.simtier_inputs(feats).items():
            parts.append(self.simtier[m](tv, hv, valid))
        return parts

    def get_config(self):
        return {**super().get_config(), "simtier_eps": self.simtier_eps, "simtier_dim": self.simtier_dim}
