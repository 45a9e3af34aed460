"""Diff-MSIN (diff-msin.md §3, SPEC §3): a multimodal plugin around any sequence backbone.

    E_a^m        = sum_j a_m(v_t^m, v_j^m) v_j^m           eq. (2), DIN target attention per modality m
    E_a^id       = backbone(v_i, hist, mask)               eq. (4), the backbone's (DIN, BST, ...) interest
    MFE          experts, shared experts, gates, L_con    eq. (3)-(9)   `MultimodalExperts`
    SRC          h_0^m = E_expert^m, T noise/denoise steps eq. (10)-(11) `SynergyDiffusion`
                 E_syn, L_syn                             eq. (12)-(13) `SynergyObjective`
    FDAF         gates, cross layer, ID-query attention   eq. (14)-(17) `AdaptiveFusion` on E_expert^te, E_expert^im,
                                                                        E_expert^sh, E_syn; query E^id (eq. 7)
    p            = sigmoid(MLP([v_u ; v_i ; backbone ; E^id ; E_att]))
    loss         = BCE + w1 L_con + w2 L_syn               eq. (19)

Outputs and losses (docs/diff_msin.md, "Where L_syn is computed"): `call` returns the click probability [B]
whenever `training` is falsy (predict, evaluate, export, serving: ids in, probability out). In a training call
that has an L_syn to compute it returns `{"prob": p [B], "syn_cos": cos(E_syn, E_target) [B]}`; `compute_loss`
adds `w2 * L_syn(y, syn_cos)` to the compiled loss on `prob`, and `compute_metrics` scores `prob`. L_con needs no
label and is registered with `add_loss` inside `MultimodalExperts`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mmctr_tf.layers import backbones as backbones_lib
from mmctr_tf.layers.attention import TargetAttention
from mmctr_tf.layers.core import MLP, masked_mean, serializable
from mmctr_tf.layers.diff_msin import AdaptiveFusion, MultimodalExperts, SynergyDiffusion, SynergyObjective
from mmctr_tf.models.base import CTRModel

ID = "id"


@serializable
class DiffMSIN(CTRModel):
    """Diff-MSIN; see the module docstring and docs/diff_msin.md.

    Args beyond CTRModel (`modalities` selects a subset of the dataset's modalities; the ID modality is always on):
      backbone: sequence backbone name ("din", "bst", ...); att_units / att_activation / att_normalization: DIN
        attention of the backbone and of eq. (2); backbone_heads / backbone_blocks: BST shape.
      dnn_units, dnn_activation, dropout: prediction MLP (as DIN).
      expert_units: d_e (128) - experts, SRC tokens, E_syn, FDAF width; num_heads: heads of CI and FDAF (8).
      diffusion_steps: T (12); alpha_start, alpha_end: linear schedule (0.999 -> 0.98);
        diffusion_schedule: "linear" | "cosine"; reverse_coef: "paper" | "ddpm"; unroll: Python-unrolled steps.
      tokens_per_vector: what one SRC token is. 1 (default, the paper): h_0^m = E_expert^m, one d_e vector per
        modality (attention over one key: the exact closed form of `SynergyDiffusion`); k > 1: each E_expert^m
        cut into k tokens of d_e / k; 0: the authors' code, SRC over the [B, L, d_e] history positions of each
        modality (~100x the cost per step). docs/diff_msin.md, "SRC: three readings".
      w1, w2: weights of L_con and L_syn (0.01); syn_margin: non-click margin of L_syn (0; 1 = literal eq. 13).
      target_vectors: not in the paper (default False): also feed the target item's frozen modality vectors to the
        prediction MLP, as mm_concat does (docs/diff_msin.md, "Ablations on Amazon Scientific").
      cross_layers: DCN layers in FDAF (1, eq. 16).
      use_mfe, use_src, use_fdaf: ablations (paper Table 4: w/o MFE and SRC = use_mfe=use_src=False, w/o SRC,
        w/o FDAF, w/o all = all three False). Without MFE each modality gets one Dense(d_e, ReLU) projection
        instead of the expert block; without FDAF the auxiliary vectors are concatenated into the MLP input.
      seed: seed of the diffusion noise generator.
    """

    uses_modalities = True

    def __init__(self, schema, backbone: str = "din", att_units=(80, 40), att_activation: str = "dice",
                 att_normalization: str = "none", backbone_heads: int = 2, backbone_blocks: int = 1,
                 dnn_units=(200, 80), dnn_activation: str = "dice", dropout: float = 0.0,
                 expert_units: int = 128, num_heads: int = 8, diffusion_steps: int = 12,
                 alpha_start: float = 0.999, alpha_end: float = 0.98, diffusion_schedule: str = "linear",
                 reverse_coef: str = "paper", tokens_per_vector: int = 1, unroll: bool = False,
                 w1: float = 0.01, w2: float = 0.01, syn_margin: float = 0.0, target_vectors: bool = False,
                 cross_layers: int = 1, use_mfe: bool = True, use_src: bool = True, use_fdaf: bool = True, seed=None,
                 **kwargs):
        super().__init__(schema, **kwargs)
        if ID in self.modalities:
            raise ValueError(f"DiffMSIN: modality name '{ID}' is reserved for the ID modality")
        self.backbone_name = backbone
        self.att_units, self.att_activation = tuple(att_units), att_activation
        self.att_normalization = att_normalization
        self.backbone_heads, self.backbone_blocks = int(backbone_heads), int(backbone_blocks)
        self.dnn_units, self.dnn_activation, self.dropout = tuple(dnn_units), dnn_activation, float(dropout)
        self.expert_units, self.num_heads = int(expert_units), int(num_heads)
        self.diffusion_steps = int(diffusion_steps)
        self.alpha_start, self.alpha_end = float(alpha_start), float(alpha_end)
        self.diffusion_schedule, self.reverse_coef = diffusion_schedule, reverse_coef
        self.tokens_per_vector, self.unroll = int(tokens_per_vector), bool(unroll)
        self.w1, self.w2, self.syn_margin = float(w1), float(w2), float(syn_margin)
        self.target_vectors = bool(target_vectors)
        self.cross_layers = int(cross_layers)
        self.use_mfe, self.use_src, self.use_fdaf = bool(use_mfe), bool(use_src), bool(use_fdaf)
        self.seed = seed
        d = self.expert_units
        if self.tokens_per_vector < 0 or (self.tokens_per_vector and d % self.tokens_per_vector):
            raise ValueError(f"DiffMSIN: tokens_per_vector={tokens_per_vector} must be 0 or divide expert_units={d}")
        self.all_modalities = [ID] + list(self.modalities)

        self.backbone = backbones_lib.make_backbone(
            backbone, att_units=att_units, att_activation=att_activation, att_normalization=att_normalization,
            seq_len=self.schema.seq_len, dropout=dropout, num_heads=self.backbone_heads,
            num_blocks=self.backbone_blocks)
        self.mm_attention = {m: TargetAttention(self.att_units, att_activation, att_normalization,
                                                name=f"{m}_attention") for m in self.modalities}
        if self.use_mfe:
            self.mfe = MultimodalExperts(self.all_modalities, d, "relu", con_weight=self.w1, gated=[ID], name="mfe")
        else:
            self.projections = {m: keras.layers.Dense(d, activation="relu", name=f"proj_{m}")
                                for m in self.all_modalities}
        if self.use_src:
            if not self.tokens_per_vector:
                self.token_proj = {m: keras.layers.Dense(d, name=f"token_proj_{m}") for m in self.all_modalities}
            self.src = SynergyDiffusion(self.all_modalities, self.diffusion_steps, self.alpha_start, self.alpha_end,
                                        diffusion_schedule, self.num_heads, d, reverse_coef, self.unroll, seed,
                                        name="src")
            self.synergy = SynergyObjective(d, self.syn_margin, name="synergy")
        self.num_aux = len(self.modalities) + int(self.use_mfe) + int(self.use_src)
        if self.use_fdaf and self.num_aux:
            self.fdaf = AdaptiveFusion(self.num_aux, d, self.num_heads, self.cross_layers, name="fdaf")
        self.dnn = MLP(self.dnn_units, dnn_activation, dropout, output_units=1, name="dnn")

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, feats, training=None, parts=None):
        """-> (logit [B], syn_cos [B] or None). A dict `parts` receives, for inspection: the per-modality target
        attention weights "attention" {m: [B, L]}, the MFE gate "mfe_gate" {"id": [B, d_e]} (eq. 6) and all MFE
        outputs "mfe", E_syn and E_target ("e_syn", "e_target", eq. 12-13), and FDAF's "fdaf_gate" [B, n, d_e]
        (eq. 14) and "fdaf_attention" [B, heads, n] (eq. 17) with the auxiliary names "aux_names"; parts of
        disabled modules are absent."""
        target, mask = feats["target"], feats["mask"]
        interest = self.backbone(target, feats["hist"], mask, training=training)
        e_a = {ID: interest}  # eq. (4): the backbone is the ID modality's attention-pooled history
        att_w, valid = {}, {ID: mask}
        for m in self.modalities:
            tv, hv, _, hp = feats["vec"][m]
            valid[m] = mask & (hp > 0)
            e_a[m], att_w[m] = self.mm_attention[m](tv, hv, valid[m], training=training)

        if self.use_mfe:
            out = self.mfe(e_a, training=training)
            expert, shared, e_id = out["expert"], out["shared"], out["fused"][ID]
            if parts is not None:
                parts["mfe_gate"], parts["mfe"] = out["gate"], out
        else:
            expert = {m: self.projections[m](e_a[m]) for m in self.all_modalities}
            shared, e_id = None, expert[ID]

        aux = [expert[m] for m in self.modalities] + ([shared] if self.use_mfe else [])  # eq. (15): E_expert
        syn_cos = None
        if self.use_src:
            h0 = self.synergy_parts(feats, expert, att_w, valid, training)
            target_repr = tf.concat([target] + [feats["vec"][m][0] for m in self.modalities], axis=-1)
            e_syn, e_target, syn_cos = self.synergy(h0, target_repr, training=training)
            aux.append(e_syn)
            if parts is not None:
                parts["e_syn"], parts["e_target"] = e_syn, e_target

        if parts is not None:
            parts["attention"] = att_w
            parts["aux_names"] = ([f"E^{m}" for m in self.modalities] + (["E^sh"] if self.use_mfe else [])
                                  + (["E^syn"] if self.use_src else []))  # eq. (15)'s names of the gated tokens
        if self.use_fdaf and aux:
            e_att, gates, weights = self.fdaf(e_id, aux, target, training=training, return_parts=True)
            z = [e_id, e_att]
            if parts is not None:
                parts["fdaf_gate"], parts["fdaf_attention"] = gates, weights
        else:
            z = [e_id] + aux
        if self.target_vectors:
            z += [feats["vec"][m][0] for m in self.modalities]
        x = tf.concat([feats["user"], target, interest] + z, axis=-1)
        return self.dnn(x, training=training)[:, 0], syn_cos

    def synergy_parts(self, feats, expert, att_w, valid, training):
        """Runs SRC and returns the per-modality final states h_0^m pooled to [B, d_e] (eq. 12's inputs)."""
        d, k = self.expert_units, self.tokens_per_vector
        if k:  # h_0^m = E_expert^m as k tokens (k = 1: the paper)
            tokens = {m: tf.reshape(expert[m], [-1, k, d // k]) for m in self.all_modalities}
            out = self.src(tokens, None, training=training)
            return [tf.reshape(out[m], [-1, d]) for m in self.all_modalities]
        # The authors' per-position reading: history slot j of modality m is one token. Text/image tokens carry
        # eq. (2)'s attention weight (E_{a,s}^m = a_j v_j); ID tokens are the history id embeddings.
        tokens = {ID: self.token_proj[ID](feats["hist"])}
        for m in self.modalities:
            hv = feats["vec"][m][1]
            tokens[m] = self.token_proj[m](hv * att_w[m][..., None])
        out = self.src(tokens, valid, training=training)
        return [masked_mean(out[m], valid[m]) for m in self.all_modalities]

    def score(self, feats, training=None):
        return self.forward(feats, training=training)[0]

    def call(self, inputs, training=None):
        logit, syn_cos = self.forward(self.features(inputs, training=training), training=training)
        prob = tf.sigmoid(logit)
        if training and syn_cos is not None and self.w2 > 0:
            return {"prob": prob, "syn_cos": syn_cos}
        return prob

    # -------------------------------------------------------------------------------------------- losses
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Compiled loss on the probability + registered losses (w1 L_con) + w2 L_syn (eq. 19)."""
        syn_cos = None
        if isinstance(y_pred, dict):
            y_pred, syn_cos = y_pred["prob"], y_pred["syn_cos"]
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if syn_cos is not None and y is not None:
            l_syn = self.synergy.loss(y, syn_cos, sample_weight)
            # Keras scales every per-replica loss by 1 / replicas (gradients are summed over replicas); do the same.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = loss + (self.w2 / replicas) * l_syn
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred["prob"]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone_name, "att_units": list(self.att_units),
                "att_activation": self.att_activation, "att_normalization": self.att_normalization,
                "backbone_heads": self.backbone_heads, "backbone_blocks": self.backbone_blocks,
                "dnn_units": list(self.dnn_units), "dnn_activation": self.dnn_activation, "dropout": self.dropout,
                "expert_units": self.expert_units, "num_heads": self.num_heads,
                "diffusion_steps": self.diffusion_steps, "alpha_start": self.alpha_start,
                "alpha_end": self.alpha_end, "diffusion_schedule": self.diffusion_schedule,
                "reverse_coef": self.reverse_coef, "tokens_per_vector": self.tokens_per_vector,
                "unroll": self.unroll, "w1": self.w1, "w2": self.w2, "syn_margin": self.syn_margin,
                "target_vectors": self.target_vectors, "cross_layers": self.cross_layers, "use_mfe": self.use_mfe,
                "use_src": self.use_src, "use_fdaf": self.use_fdaf, "seed": self.seed}
