"""DMAE: Distribution-Guided Multimodal-Interest Auto-Encoder (dmae.md §4, SPEC §2), a plugin on a DIN backbone."""

from __future__ import annotations

import tensorflow as tf

from mmctr_tf.layers.core import masked_mean, serializable
from mmctr_tf.layers.dmae import (CrossModalInterestAttention, InterestDecoder, InterestDistribution,
                                  SimilarityEncoder, SlidingWindowAttention)
from mmctr_tf.models.din import DIN


@serializable
class DMAE(DIN):
    """p = sigmoid(DNN([v_u ; v_i ; h ; r*_m1 ; r*_m2])) (eq. 14-15), h from the DIN backbone, r*_m from
    MIEU (eq. 1-4) -> MIFU (eq. 5-9) on the per-modality similarity sequences r_m = (cos(v_i^m, v_j^m) + 1) / 2.
    Training adds lambda_dec * L_dec (eq. 10-13, 17) from the training-only IDDU decoder.

    Args beyond DIN: lambda_dec (0 = "w/o IDDU": no decoder is built), l, n (interest-distribution grid),
    num_buckets (N_B), window (MIFU sliding window w), mask_ratio (decoder position mask), mieu_dim (d, even),
    use_sine_cosine (False = "w/o MIEU-se"), use_time_axis (False = "w/o MIEU-t": l = 1), use_mifu
    (False = "w/o MIFU": r*_m = masked mean of the MIEU outputs), decoder_units (hidden layers of the decoder MLP),
    q_activation (softmax | sigmoid, see InterestDecoder), window_residual (residual in the window attention).

    Two modalities (the first plays m1, the second m2) are fused by the cross attention of eq. (8)-(9); with one
    modality there is no cross-modal fusion: r*_m is the pooled window-attention output of eq. (7) (docs/dmae.md).
    A history slot whose vector of a modality is missing, and every slot when the target's vector is missing, is
    masked in that modality's similarity sequence.
    """

    uses_modalities = True
    table_inverse_norms = True  # r needs cosines only: FrozenVectorTable.cosines

    def __init__(self, schema, lambda_dec: float = 0.5, l: int = 10, n: int = 10,  # noqa: E741 (paper's names)
                 num_buckets: int = 20, window: int = 10, mask_ratio: float = 0.3, mieu_dim: int = 16,
                 use_sine_cosine: bool = True, use_time_axis: bool = True, use_mifu: bool = True,
                 decoder_units=(64,), q_activation: str = "softmax", window_residual: bool = True, **kwargs):
        super().__init__(schema, **kwargs)
        if not self.modalities:
            raise ValueError("DMAE needs item vectors of one or two modalities and the dataset has none: use a "
                             "dataset converted with vector tables (e.g. --dataset=scientific) or an ID-only model "
                             "(--model=din)")
        if len(self.modalities) > 2:
            raise ValueError(f"DMAE fuses one or two modalities (eq. 8-9 pair m1 with m2); the dataset has "
                             f"{self.modalities}: choose them with --modalities={','.join(self.modalities[:2])}")
        if float(lambda_dec) < 0:
            raise ValueError(f"DMAE: lambda_dec must be >= 0, got {lambda_dec}")
        self.lambda_dec, self.l, self.n = float(lambda_dec), int(l), int(n)
        self.num_buckets, self.window, self.mask_ratio = int(num_buckets), int(window), float(mask_ratio)
        self.mieu_dim = int(mieu_dim)
        self.use_sine_cosine, self.use_time_axis = bool(use_sine_cosine), bool(use_time_axis)
        self.use_mifu = bool(use_mifu)
        self.decoder_units, self.q_activation = tuple(int(u) for u in decoder_units), q_activation
        self.window_residual = bool(window_residual)
        self.time_segments = self.l if self.use_time_axis else 1

        L = self.schema.seq_len
        self.encoders = {m: SimilarityEncoder(self.num_buckets, self.mieu_dim, L, self.use_sine_cosine,
                                              name=f"mieu_{m}") for m in self.modalities}
        self.window_attention = ({m: SlidingWindowAttention(self.mieu_dim, self.window, self.window_residual,
                                                            name=f"mifu_window_{m}") for m in self.modalities}
                                 if self.use_mifu else {})
        self.cross_attention = (CrossModalInterestAttention(self.mieu_dim, name="mifu_cross")
                                if self.use_mifu and len(self.modalities) == 2 else None)
        self.distribution = InterestDistribution(self.time_segments, self.n, name="interest_distribution")
        self.decoder = None
        if self.lambda_dec > 0:
            M = len(self.modalities)
            self.decoder = InterestDecoder(self.time_segments, self.n, M, self.decoder_units, self.mask_ratio,
                                           self.lambda_dec, self.q_activation, name="iddu_decoder")
            # built now (not at its first training call) so weights exist for save/load before any training
            self.decoder.build([(None, L, self.mieu_dim)] * M)

    # ------------------------------------------------------------------------------------------- MIEU / MIFU
    def similarities(self, feats):
        """{m: (r [B, L] in [0, 1], 0 where masked; mask [B, L] bool)} with r = (cos + 1) / 2 (SPEC §2). The cosines
        come from the tables' stored inverse row norms (`FrozenVectorTable.cosines`: a dot product per slot instead
        of normalising every [B, L, dim] history vector; equal to `safe_cosine` up to rounding)."""
        out = {}
        ids = feats["ids"]
        for m in self.modalities:
            tv, hv, tp, hp = feats["vec"][m]
            mask = feats["mask"] & (hp > 0) & tf.expand_dims(tp > 0, 1)
            r = (self.tables[m].cosines(ids["item_id"], tv, ids["hist_item_id"], hv) + 1.0) / 2.0
            out[m] = (tf.where(mask, r, tf.zeros_like(r)), mask)
        return out

    def encode(self, feats, training=None):
        """MIEU + MIFU. Returns {"r": [r_m1, r_m2], "mask": [...], "seq": per-behaviour interest sequences after
        the window attention (the decoder's input), "interest": [r*_m1, r*_m2]}."""
        sims = self.similarities(feats)
        rs, masks, seqs = [], [], []
        for m in self.modalities:
            r, mask = sims[m]
            seq = self.encoders[m](r, mask, feats["hist_len"])  # eq. (1)-(4)
            if self.use_mifu:
                seq = self.window_attention[m](seq, mask)  # eq. (5)-(6)
            rs.append(r), masks.append(mask), seqs.append(seq)
        if self.cross_attention is not None:
            interest = list(self.cross_attention(seqs[0], seqs[1], masks[0], masks[1]))  # eq. (7)-(9)
        else:  # w/o MIFU, or one modality: eq. (7) pooling only
            interest = [masked_mean(s, k) for s, k in zip(seqs, masks)]
        return {"r": rs, "mask": masks, "seq": seqs, "interest": interest}

    def dnn_inputs(self, feats, training=None):
        parts = super().dnn_inputs(feats, training=training)  # [v_u, v_i, h] (eq. 14)
        enc = self.encode(feats, training=training)
        if training and self.decoder is not None:  # IDDU: training only, never in the inference graph
            targets = [self.distribution(r, k, feats["hist_len"]) for r, k in zip(enc["r"], enc["mask"])]
            self.decoder(enc["seq"], enc["mask"], targets, training=True)  # adds lambda_dec * L_dec
        return parts + enc["interest"]  # eq. (15)

    # ------------------------------------------------------------------------------------------- inspection
    def interest_distributions(self, inputs):
        """For one batch: {modality: (P [B, l, n], Q [B, l, n] or None without decoder)}; Q is decoded from every
        valid slot (no random mask), in inference mode."""
        feats = self.features(inputs, training=False)
        enc = self.encode(feats, training=False)
        out = {}
        for i, m in enumerate(self.modalities):
            p = self.distribution(enc["r"][i], enc["mask"][i], feats["hist_len"])
            q = self.decoder.decode(i, enc["seq"][i], enc["mask"][i]) if self.decoder is not None else None
            out[m] = (p, q)
        return out

    def get_config(self):
        return {**super().get_config(), "lambda_dec": self.lambda_dec, "l": self.l, "n": self.n,
                "num_buckets": self.num_buckets, "window": self.window, "mask_ratio": self.mask_ratio,
                "mieu_dim": self.mieu_dim, "use_sine_cosine": self.use_sine_cosine,
                "use_time_axis": self.use_time_axis, "use_mifu": self.use_mifu,
                "decoder_units": list(self.decoder_units), "q_activation": self.q_activation,
                "window_residual": self.window_residual}
