"""DMAE: Distribution-Guided Multimodal-Interest Auto-Encoder (dmae.md §4, SPEC §2), a plugin on a DIN backbone."""

from __future__ import annotations

import tensorflow as tf

from mmctr_tf.layers.core import serializable
from mmctr_tf.layers.dmae import (
    CrossModalInterestAttention,
    InterestDecoder,
    InterestDistribution,
    SimilarityEncoder,
    SlidingWindowAttention,
    pack_slots,
    segment_mean,
)
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
    def packed_slots(self, feats):
        """(rows [N], slots [N]) of the packed history (mmctr_tf/layers/dmae.py): the slots j < hist_len, or every
        slot when traced for XLA, which needs shapes that do not depend on the data."""
        return pack_slots(feats["mask"], all_slots=tf.__internal__.get_enclosing_xla_context() is not None)

    def packed_similarities(self, feats, rows, slots):
        """{m: (r [N] in [0, 1], 0 where not valid; valid [N] bool)} on the packed slots, r = (cos + 1) / 2
        (SPEC §2), from the tables' stored inverse row norms (`FrozenVectorTable.cosines`). A position is valid iff
        it is a behaviour (slot < hist_len) and the target's and the behaviour's vectors of m are present."""
        ids = feats["ids"]
        hist_ids = tf.gather_nd(ids["hist_item_id"], tf.stack([rows, slots], axis=1))
        target_ids = tf.gather(ids["item_id"], rows)
        behaviour = slots < tf.gather(feats["hist_len"], rows)
        out = {}
        for m in self.modalities:
            table = self.tables[m]
            tv, _, tp, _ = feats["vec"][m]
            hv, hp = table(hist_ids)
            valid = behaviour & (hp > 0) & tf.gather(tp > 0, rows)
            r = (table.cosines(target_ids, tf.gather(tv, rows), hist_ids, hv) + 1.0) / 2.0
            out[m] = (tf.where(valid, r, tf.zeros_like(r)), valid)
        return out

    def similarities(self, feats):
        """{m: (r [B, L], mask [B, L] bool)} in the padded layout (for inspection): `packed_similarities` scattered
        back, r = 0 and mask False at padded or masked slots."""
        rows, slots = self.packed_slots(feats)
        pos, shape = tf.stack([rows, slots], axis=1), tf.shape(feats["mask"])
        return {m: (tf.scatter_nd(pos, r, shape), tf.scatter_nd(pos, tf.cast(valid, tf.int32), shape) > 0)
                for m, (r, valid) in self.packed_similarities(feats, rows, slots).items()}

    def encode(self, feats, training=None):
        """MIEU + MIFU on the packed history. Returns {"rows", "slots", "r": [r_m1, r_m2], "valid": [...], "seq":
        per-behaviour interest sequences after the window attention (the decoder's input), "interest": [r*_m1,
        r*_m2] ([B, d] each)}."""
        rows, slots = self.packed_slots(feats)
        num_rows = tf.shape(feats["mask"])[0]
        recency = tf.gather(feats["hist_len"], rows) - 1 - slots  # "T - j" of eq. (4), 0 = most recent
        sims = self.packed_similarities(feats, rows, slots)
        rs, valids, seqs = [], [], []
        for m in self.modalities:
            r, valid = sims[m]
            seq = self.encoders[m](r, valid, recency)  # eq. (1)-(4)
            if self.use_mifu:
                seq = self.window_attention[m](seq, valid, rows)  # eq. (5)-(6)
            rs.append(r), valids.append(valid), seqs.append(seq)
        if self.cross_attention is not None:  # eq. (7)-(9)
            interest = list(self.cross_attention(seqs[0], seqs[1], valids[0], valids[1], rows, num_rows))
        else:  # w/o MIFU, or one modality: eq. (7) pooling only
            interest = [segment_mean(s, v, rows, num_rows) for s, v in zip(seqs, valids)]
        return {"rows": rows, "slots": slots, "r": rs, "valid": valids, "seq": seqs, "interest": interest}

    def distributions(self, feats, enc):
        """P [B, l, n] per modality (eq. 10)."""
        return [self.distribution(r, v, enc["rows"], enc["slots"], feats["hist_len"])
                for r, v in zip(enc["r"], enc["valid"])]

    def dnn_inputs(self, feats, training=None):
        parts = super().dnn_inputs(feats, training=training)  # [v_u, v_i, h] (eq. 14)
        enc = self.encode(feats, training=training)
        if training and self.decoder is not None:  # IDDU: training only, never in the inference graph
            self.decoder(enc["seq"], enc["valid"], self.distributions(feats, enc), enc["rows"],
                         training=True)  # adds lambda_dec * L_dec
        return parts + enc["interest"]  # eq. (15)

    # ------------------------------------------------------------------------------------------- inspection
    def interest_distributions(self, inputs):
        """For one batch: {modality: (P [B, l, n], Q [B, l, n] or None without decoder)}; Q is decoded from every
        valid slot (no random mask), in inference mode."""
        feats = self.features(inputs, training=False)
        enc = self.encode(feats, training=False)
        num_rows = tf.shape(feats["mask"])[0]
        out = {}
        for i, (m, p) in enumerate(zip(self.modalities, self.distributions(feats, enc))):
            q = (self.decoder.decode(i, enc["seq"][i], enc["valid"][i], enc["rows"], num_rows)
                 if self.decoder is not None else None)
            out[m] = (p, q)
        return out

    def get_config(self):
        return {**super().get_config(), "lambda_dec": self.lambda_dec, "l": self.l, "n": self.n,
                "num_buckets": self.num_buckets, "window": self.window, "mask_ratio": self.mask_ratio,
                "mieu_dim": self.mieu_dim, "use_sine_cosine": self.use_sine_cosine,
                "use_time_axis": self.use_time_axis, "use_mifu": self.use_mifu,
                "decoder_units": list(self.decoder_units), "q_activation": self.q_activation,
                "window_residual": self.window_residual}
