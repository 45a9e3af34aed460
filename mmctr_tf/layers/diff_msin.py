"""Diff-MSIN building blocks (diff-msin.md §3, SPEC §3). Equation -> layer map (details in docs/diff_msin.md):

  eq. 3-7   `MultimodalExperts`   specific experts, shared experts averaged, sigmoid gates   (MFE)
  eq. 8-9   `contrastive_loss`    L_con, registered by `MultimodalExperts` (add_loss, tracker `con_loss`)
  eq. 10-11 `SynergyDiffusion`    T noise / cross-modal-attention denoise steps            (SRC)
            `noise_schedule`, `forward_noise`, `reverse_step`: the schedule and the two pure update rules
  eq. 12-13 `SynergyObjective`    E_syn = MLP([h^im ; h^te ; h^id]), E_target, L_syn hinge (tracker `syn_loss`)
  eq. 14-17 `AdaptiveFusion`      target-id gates, DCN cross (`CrossLayer`), ID-query multi-head attention (FDAF)

All layers work on float32 tensors, never divide by a norm without a floor, and are deterministic when `training`
is falsy (no diffusion noise at inference). Cosines use `cosine` below (0 for a zero vector, and a finite
gradient there too).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.layers.core import MLP, safe_cosine, serializable
from mmctr_tf.layers.cross import CrossLayer
from mmctr_tf.layers.mha import MultiHeadCrossAttention, dense


# ------------------------------------------------------------------------------------------- pure functions
def noise_schedule(steps: int, kind: str = "linear", alpha_start: float = 0.999, alpha_end: float = 0.98,
                   alpha_min: float = 1e-2, alpha_max: float = 1.0 - 1e-4):
    """Per-step alpha_t and alpha_bar_t = prod_{s<=t} alpha_s for t = 1..T, as float64 numpy arrays [T].

    linear (paper, SPEC default): alpha_t = linspace(alpha_start, alpha_end, T).
    cosine (authors' code): alpha_bar(s) = cos^2(s), s = linspace(0, 0.9 pi / 2, T + 1), alpha_t =
      alpha_bar_t / alpha_bar_{t-1} for t = 1..T. Starting at t = 1 keeps alpha_bar_0 = 1 out of every
      denominator (the authors' code divides by sqrt(1 - alpha_bar_0) = 0 there and blows states up ~100x);
      alpha_t is also clipped to [alpha_min, alpha_max] and alpha_bar to <= alpha_max, so 1/sqrt(alpha_t) <= 10
      and sqrt(1 - alpha_bar_t) > 0 for any T.
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"noise_schedule: steps must be >= 1, got {steps}")
    if kind == "linear":
        alphas = np.linspace(alpha_start, alpha_end, steps, dtype=np.float64)
        if not (0.0 < alphas.min() and alphas.max() <= 1.0):
            raise ValueError(f"noise_schedule: alphas must lie in (0, 1], got {alpha_start}..{alpha_end}")
    elif kind == "cosine":
        bars = np.cos(np.linspace(0.0, 0.9 * math.pi / 2.0, steps + 1, dtype=np.float64)) ** 2
        alphas = bars[1:] / bars[:-1]
    else:
        raise ValueError(f"noise_schedule: unknown schedule '{kind}' (linear | cosine)")
    alphas = np.clip(alphas, alpha_min, alpha_max) if kind == "cosine" else alphas
    bars = np.minimum(np.cumprod(alphas), alpha_max)
    return alphas, bars


def forward_noise(h, eps, alpha_t):
    """Eq. (10): h_hat = sqrt(alpha_t) h + sqrt(1 - alpha_t) eps."""
    return math_sqrt(alpha_t) * h + math_sqrt(1.0 - alpha_t) * eps


def reverse_step(h_hat, eps_hat, alpha_t, coef=None):
    """Eq. (11): h = (h_hat - c_t eps_hat) / sqrt(alpha_t), with c_t = (1 - alpha_t) / sqrt(1 - alpha_t)
    = sqrt(1 - alpha_t) as the paper writes it (default), or a given `coef` (e.g. the DDPM factor
    (1 - alpha_t) / sqrt(1 - alpha_bar_t)). With c_t = sqrt(1 - alpha_t) and eps_hat = eps this exactly inverts
    `forward_noise(h, eps, alpha_t)`."""
    c = math_sqrt(1.0 - alpha_t) if coef is None else coef
    return (h_hat - c * eps_hat) / math_sqrt(alpha_t)


def math_sqrt(x):
    """sqrt for Python floats, numpy values and tensors alike."""
    if isinstance(x, (float, int, np.floating, np.integer)):
        return math.sqrt(float(x))
    return tf.sqrt(x)


cosine = safe_cosine  # gradient-safe at zero vectors (see core.safe_cosine)


def pairwise_cosine_sum(vectors: Sequence[tf.Tensor]) -> tf.Tensor:
    """sum_i sum_{j != i} cos(v_i, v_j) per example ([B]); ordered pairs, as eq. (9) writes the double sum
    (= 2 x the sum over unordered pairs). Zero vectors give cosine 0, never NaN."""
    total = None
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            c = 2.0 * cosine(vectors[i], vectors[j])
            total = c if total is None else total + c
    if total is None:
        return tf.zeros_like(vectors[0][:, 0]) if vectors else tf.zeros([1])
    return total


def contrastive_loss(specific: Sequence[tf.Tensor], shared: Sequence[tf.Tensor]) -> tf.Tensor:
    """L_con, eq. (9) as SPEC §3 fixes it: the pairwise cosines between the specific experts {sh, id, im, te}
    (pushed apart) minus the pairwise cosines between the per-modality shared experts {id, im, te} (pulled
    together), averaged over the batch. Scalar."""
    loss = pairwise_cosine_sum(list(specific))
    if len(shared) > 1:
        loss = loss - pairwise_cosine_sum(list(shared))
    return tf.reduce_mean(loss)


def synergy_hinge(y, cos, margin: float = 0.0):
    """Per-example L_syn (eq. 13, margin form): (1 - y) max(0, cos - margin) + y max(0, 1 - cos).

    The paper's non-click term max(0, -1 - cos) is identically 0 because cos >= -1, so as written eq. (13) never
    pushes non-clicks away and E_syn could sit at E_target for every example. The margin form keeps the paper's
    intent ("far" for non-clicks): a non-click costs as soon as its cosine exceeds `margin` (default 0, i.e.
    non-clicks are pushed to orthogonal or beyond). margin = 1 reproduces the literal eq. (13) (term always 0)."""
    y = tf.cast(tf.reshape(y, [-1]), cos.dtype)
    return (1.0 - y) * tf.nn.relu(cos - margin) + y * tf.nn.relu(1.0 - cos)


# ------------------------------------------------------------------------------------------- MFE
@serializable
class MultimodalExperts(keras.layers.Layer):
    """Multi-modal Feature Enhancement, eq. (3)-(9).

    For every modality m (the ID modality "id" included):
      E_expert^m = Expert_m(E_a^m)                         eq. (3); for m = id this is eq. (4): the projection
                                                            of the backbone output to d_e
      E_share^m  = Expert_m^sh(E_a^m)                      eq. (5)
      E_expert^sh = mean_m E_share^m                       eq. (5)
      w_m = sigmoid(W_m E_expert^m + b_m)  (vector gate)   eq. (6)
      E^m = w_m * E_expert^m + (1 - w_m) * E_expert^sh     eq. (7)
    Experts are MLP(units, activation) (paper / SPEC: 128, ReLU). Eq. (6)-(7) are computed for the modalities in
    `gated` (default: all). In the paper only E^id is read afterwards (eq. 17's query; FDAF, eq. 15, and SRC,
    §3.4.1, read E_expert^m), so Diff-MSIN gates the ID modality only and builds no gate that nothing reads.

    Loss: when training and `con_weight > 0`, registers `con_weight * L_con` (eq. 8-9, `contrastive_loss` over
    specific {sh, id, te, im} and shared {id, te, im}) with `add_loss` and logs the unweighted value in the
    `con_loss` tracker.

    call(inputs {m: E_a^m [B, d_m]}) -> {"expert": {m: [B, units]}, "share": {m: ...}, "shared": [B, units],
                                          "fused": {m: E^m for m in gated}, "gate": {m: w_m for m in gated}}
    """

    def __init__(self, modalities: Sequence[str] = ("id", "text", "image"), units: int = 128,
                 activation: str = "relu", con_weight: float = 0.01, gated: Optional[Sequence[str]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.modalities_ = list(modalities)
        self.units = int(units)
        self.activation = activation
        self.con_weight = float(con_weight)
        self.gated = list(self.modalities_ if gated is None else gated)
        unknown = sorted(set(self.gated) - set(self.modalities_))
        if unknown:
            raise ValueError(f"MultimodalExperts: gated modalities {unknown} are not in {self.modalities_}")
        self.experts = {m: MLP((self.units,), activation, name=f"expert_{m}") for m in self.modalities_}
        self.shared_experts = {m: MLP((self.units,), activation, name=f"shared_expert_{m}") for m in self.modalities_}
        self.gates = {m: keras.layers.Dense(self.units, activation="sigmoid", name=f"gate_{m}") for m in self.gated}
        self.con_loss_tracker = keras.metrics.Mean(name="con_loss")

    def call(self, inputs, training=None):
        expert = {m: self.experts[m](inputs[m]) for m in self.modalities_}
        share = {m: self.shared_experts[m](inputs[m]) for m in self.modalities_}
        shared = tf.add_n(list(share.values())) / float(len(share))
        fused, gate = {}, {}
        for m in self.gated:
            w = gate[m] = self.gates[m](expert[m])
            fused[m] = w * expert[m] + (1.0 - w) * shared
        if training and self.con_weight > 0:
            # float32 under any precision policy: every term is a `cosine`, which computes in float32
            loss = contrastive_loss([shared] + [expert[m] for m in self.modalities_],
                                    [share[m] for m in self.modalities_])
            self.add_loss(self.con_weight * loss)
            self.con_loss_tracker.update_state(loss)
        return {"expert": expert, "share": share, "shared": shared, "fused": fused, "gate": gate}

    def get_config(self):
        return {**super().get_config(), "modalities": list(self.modalities_), "units": self.units,
                "activation": self.activation, "con_weight": self.con_weight, "gated": list(self.gated)}


# ------------------------------------------------------------------------------------------- SRC
@serializable
class SynergyDiffusion(keras.layers.Layer):
    """Synergistic Relationship Capture, eq. (10)-(11): T steps of noising and cross-modal denoising.

    Each modality m carries a token sequence h^m [B, S, d]. The paper (default, `DiffMSIN(tokens_per_vector=1)`)
    has S = 1: h_0^m = E_expert^m, one d_e vector per modality (§3.4.1). The other readings documented in
    docs/diff_msin.md give S = k pieces of that vector, or S = L history positions (the authors' code).
    For i = 0..T-1 with t = T - i (reverse order, the noisiest step first):
      x^m     = sqrt(a_t) h^m + sqrt(1 - a_t) eps^m          eq. (10), eps ~ N(0, I) only when training;
                                                             at inference eps = 0 (deterministic serving)
      eps_hat^m = sum_{n != m} alpha_{m,n} CI(x^m, x^n)    eq. (11), CI = multi-head attention (query x^m,
                                                             key = value x^n, n's padding masked)
      h^m     = (x^m - c_t eps_hat^m) / sqrt(a_t)          eq. (11), c_t = sqrt(1 - a_t) ("paper") or the
                                                             DDPM factor (1 - a_t) / sqrt(1 - abar_t) ("ddpm")
    At inference the step is x = sqrt(a_t) h (the mean of the training-time x), so training and serving see
    the same expected scale and the states are not inflated by prod 1/sqrt(a_t).

    alpha_{m,n}: one learnable scalar per ordered pair, initialised to 0.5 (the paper: "learned parameters").
    CI: ONE `MultiHeadCrossAttention(num_heads, hidden // num_heads)` (layers/mha.py) shared by all ordered
    pairs and all T steps: eq. (11) writes a single function CI(h^m, h^n) = Attention(h^m, h^n, h^n), and the
    pair-specific part is alpha_{m,n} (one denoiser for every step, as in diffusion models).

    Cheaper exact forms. S = 1 (the paper): attention over a single key has weight 1, so
    CI(x^m, x^n) = (x^n W_v + b_v) W_o + b_o = x^n W + b does not depend on x^m, and
    eps_hat^m = sum_{n != m} alpha_{m,n} (x^n W + b): W = W_v W_o and b are formed once per call, and a step
    costs one [M B, d] x [d, d] product for the M modalities (the query and key projections do not exist, see
    layers/mha.py). S > 1: per step each modality's query / key / value projections are computed once (not
    once per pair), the attention cores of all pairs run in one batched call (pairs stacked along the batch
    axis), and because the output projection is linear, sum_n alpha_{m,n} CI(x^m, x^n) is projected once per
    modality: (sum_n alpha_{m,n} o_{m,n}) W_o + (sum_n alpha_{m,n}) b_o. Invalid query positions are kept at 0.

    The T steps run in one `tf.while_loop` (`unroll=False`, graph size independent of T, XLA-compilable) or
    unrolled in Python (`unroll=True`); both compute the same function. Noise per step is drawn with
    `tf.random.stateless_normal` from a per-call seed pair drawn from the layer's `SeedGenerator`, unless the
    caller passes it (`noise`, e.g. to check the layer against a reference computation).

    call(tokens {m: [B, S, d]}, masks {m: [B, S] bool} or None, training, noise {m: [T, B, S, d]} or None: eps of
    loop step i at index i, used in training calls only) -> {m: [B, S, d]}
    """

    def __init__(self, modalities: Sequence[str] = ("id", "text", "image"), steps: int = 12,
                 alpha_start: float = 0.999, alpha_end: float = 0.98, schedule: str = "linear",
                 num_heads: int = 8, hidden: int = 128, reverse_coef: str = "paper", unroll: bool = False,
                 seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if reverse_coef not in ("paper", "ddpm"):
            raise ValueError(f"SynergyDiffusion: reverse_coef must be 'paper' or 'ddpm', got '{reverse_coef}'")
        self.modalities_ = list(modalities)
        self.steps = int(steps)
        self.alpha_start, self.alpha_end = float(alpha_start), float(alpha_end)
        self.schedule = schedule
        self.num_heads, self.hidden = int(num_heads), int(hidden)
        self.reverse_coef = reverse_coef
        self.unroll = bool(unroll)
        self.seed = seed
        alphas, bars = noise_schedule(self.steps, schedule, self.alpha_start, self.alpha_end)
        self.alphas, self.alpha_bars = alphas, bars  # float64 numpy [T], t = 1..T
        self.pairs = [(m, n) for m in self.modalities_ for n in self.modalities_ if n != m]
        self.ci = MultiHeadCrossAttention(self.num_heads, max(1, self.hidden // self.num_heads), name="ci")
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, tokens_shape, masks_shape=None):
        shape = tuple(next(iter(tokens_shape.values())))
        self.pair_coef = None
        if self.pairs:  # a single modality has nothing to interact with: eps_hat = 0
            self.ci.build(shape, shape)
            self.pair_coef = self.add_weight(shape=(len(self.pairs),), initializer=keras.initializers.Constant(0.5),
                                             name="pair_coef")

    def step_coefficients(self):
        """(sqrt(a_t), sqrt(1 - a_t), c_t) for t = 1..T as float32 numpy arrays [T]."""
        a = self.alphas
        c = np.sqrt(1.0 - a) if self.reverse_coef == "paper" else (1.0 - a) / np.sqrt(1.0 - self.alpha_bars)
        return np.sqrt(a).astype(np.float32), np.sqrt(1.0 - a).astype(np.float32), c.astype(np.float32)

    def pair_matrix(self):
        """[M, M] matrix A with A[m, n] = alpha_{m,n} (0 on the diagonal), modality order (formed once per call)."""
        idx = {m: i for i, m in enumerate(self.modalities_)}
        M = len(self.modalities_)
        flat = [idx[m] * M + idx[n] for m, n in self.pairs]
        return tf.reshape(tf.scatter_nd([[f] for f in flat], tf.convert_to_tensor(self.pair_coef), [M * M]), [M, M])

    def denoise(self, x, masks, single=None):
        """eps_hat^m = sum_{n != m} alpha_{m,n} CI(x^m, x^n) for every m: x [M, B, S, d] in modality order, masks
        [M, B, S] bool or None; `single` = (A, W, b) for S = 1: the pair matrix and CI's single-key affine map."""
        if not self.pairs:
            return tf.zeros_like(x)
        if single is not None:  # S = 1: CI(x^m, x^n) = x^n W + b, eps_hat = A (x W + b) over the modality axis
            pair, w, b = single
            u = dense(x, w, b)
            return tf.reshape(tf.matmul(pair, tf.reshape(u, [len(self.modalities_), -1])), tf.shape(x))
        idx = {m: i for i, m in enumerate(self.modalities_)}
        xs = tf.unstack(x, len(self.modalities_))
        q, k, v = ([self.ci.project(h, which) for h in xs] for which in ("query", "key", "value"))
        query = tf.concat([q[idx[m]] for m, _ in self.pairs], axis=0)  # [P * B, H, S, d_k]
        key = tf.concat([k[idx[n]] for _, n in self.pairs], axis=0)
        value = tf.concat([v[idx[n]] for _, n in self.pairs], axis=0)
        vmask = None if masks is None else tf.concat([masks[idx[n]] for _, n in self.pairs], axis=0)
        att = tf.split(self.ci.attend(query, key, value, vmask), len(self.pairs), axis=0)  # P x [B, S, H d_k]
        mixed, coef = [None] * len(xs), [0.0] * len(xs)
        for p, (m, _) in enumerate(self.pairs):
            term = self.pair_coef[p] * att[p]
            mixed[idx[m]] = term if mixed[idx[m]] is None else mixed[idx[m]] + term
            coef[idx[m]] = coef[idx[m]] + self.pair_coef[p]
        return tf.stack([self.ci.output(o, c) for o, c in zip(mixed, coef)])

    def call(self, tokens, masks=None, training=None, noise=None):
        mods = self.modalities_
        h = tf.stack([tf.convert_to_tensor(tokens[m]) for m in mods])  # [M, B, S, d]
        mk = None if masks is None else tf.stack([tf.cast(masks[m], tf.bool) for m in mods])  # [M, B, S]
        keep = None if mk is None else tf.cast(mk, h.dtype)[..., None]
        if keep is not None:
            h = h * keep
        sa, s1a, c = (tf.constant(v, dtype=h.dtype) for v in self.step_coefficients())
        single = (self.pair_matrix(), *self.ci.single_key_affine()) if self.pairs and self.ci.single_key else None
        T = self.steps
        noisy = bool(training)
        if noisy and noise is not None:
            eps_all = tf.cast(tf.stack([noise[m] for m in mods], axis=1), h.dtype)  # [T, M, B, S, d]
        elif noisy:
            base = keras.random.randint((2,), 0, 2 ** 30, seed=self.seed_generator, dtype="int32")

        def one_step(i, h):
            idx = T - 1 - i  # t = T - i, schedule index t - 1
            sa_t, s1a_t, c_t = tf.gather(sa, idx), tf.gather(s1a, idx), tf.gather(c, idx)
            x = sa_t * h
            if noisy:
                eps = (tf.gather(eps_all, i) if noise is not None else
                       tf.random.stateless_normal(tf.shape(h), seed=tf.stack([base[0], base[1] + tf.cast(i, tf.int32)]),
                                                  dtype=h.dtype))
                x = x + s1a_t * (eps if keep is None else eps * keep)
            h = (x - c_t * self.denoise(x, mk, single)) / sa_t
            return h if keep is None else h * keep

        if self.unroll:
            for i in range(T):
                h = one_step(tf.constant(i), h)
        else:
            _, h = tf.while_loop(lambda i, _: i < T, lambda i, hh: (i + 1, one_step(i, hh)), (tf.constant(0), h),
                                 maximum_iterations=T)
        return {m: h[k] for k, m in enumerate(mods)}

    def get_config(self):
        return {**super().get_config(), "modalities": list(self.modalities_), "steps": self.steps,
                "alpha_start": self.alpha_start, "alpha_end": self.alpha_end, "schedule": self.schedule,
                "num_heads": self.num_heads, "hidden": self.hidden, "reverse_coef": self.reverse_coef,
                "unroll": self.unroll, "seed": self.seed}


# ------------------------------------------------------------------------------------------- E_syn, L_syn
@serializable
class SynergyObjective(keras.layers.Layer):
    """Eq. (12)-(13): E_syn = MLP([h_0^m for m]) and its target for L_syn.

      E_syn    = MLP([h^id ; h^te ; h^im])   Dense(2 units, GELU) -> Dense(units) (the authors' 3d -> 2d -> d)
      E_target = Dense(units)([v_i ; target text vector ; target image vector])  (projection of the target item's
                 id / text / image embeddings, SPEC §3)
      cos      = cos(E_syn, E_target)         [B], 0 for zero vectors (`cosine`)

    L_syn needs the label, which `call` never sees: the model returns `cos` from its training-time `call` and
    `DiffMSIN.compute_loss` calls `loss(y, cos, sample_weight)`, which returns the unweighted batch mean of
    `synergy_hinge` and logs it in the `syn_loss` tracker (see docs/diff_msin.md, "Where L_syn is computed").

    call(parts [list of [B, d]], target [B, dt]) -> (E_syn [B, units], E_target [B, units], cos [B])
    """

    def __init__(self, units: int = 128, margin: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.margin = float(margin)
        self.mlp = MLP((2 * self.units,), "gelu", output_units=self.units, name="syn_mlp")
        self.target_proj = keras.layers.Dense(self.units, name="target_proj")
        self.syn_loss_tracker = keras.metrics.Mean(name="syn_loss")

    def call(self, parts, target, training=None):
        e_syn = self.mlp(tf.concat(list(parts), axis=-1), training=training)
        e_target = self.target_proj(target)
        return e_syn, e_target, cosine(e_syn, e_target)

    def loss(self, y, cos, sample_weight=None):
        per = synergy_hinge(y, tf.cast(cos, tf.float32), self.margin)
        if sample_weight is not None:
            per = per * tf.cast(tf.reshape(sample_weight, [-1]), per.dtype)
        value = tf.reduce_mean(per)
        self.syn_loss_tracker.update_state(value)
        return value

    def get_config(self):
        return {**super().get_config(), "units": self.units, "margin": self.margin}


# ------------------------------------------------------------------------------------------- FDAF
@serializable
class AdaptiveFusion(keras.layers.Layer):
    """Feature Dynamic Adaptive Fusion, eq. (14)-(17).

      [w_1 .. w_n] = sigmoid(W E_target^id + b)      eq. (14), one d-dim gate per auxiliary (n = 4 for
                                                     E^im, E^te, E^sh, E^syn; fewer under ablations)
      E'  = [w_1 * A_1 ; ... ; w_n * A_n]            eq. (15)
      E_c = Cross^K(E')  (DCN-v1, K = cross_layers)  eq. (16)
      E_att = MHA(query = E^id, key = value = E_c cut back into n tokens of d)   eq. (17)

    call(query [B, d], aux [list of n x [B, d]], gate_input [B, dg]) -> E_att [B, d]; with `return_parts`
    (for inspection) -> (E_att, gates [B, n, d], attention probabilities [B, heads, n]).
    """

    def __init__(self, num_aux: int, units: int = 128, num_heads: int = 8, cross_layers: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.num_aux, self.units = int(num_aux), int(units)
        self.num_heads, self.cross_layers = int(num_heads), int(cross_layers)
        self.gate = keras.layers.Dense(self.num_aux * self.units, activation="sigmoid", name="modality_gate")
        self.cross = [CrossLayer(name=f"cross_{i}") for i in range(self.cross_layers)]
        self.attention = MultiHeadCrossAttention(self.num_heads, max(1, self.units // self.num_heads),
                                                 name="fusion_attention")

    def gates(self, gate_input):
        """[B, n, d] modality gates of eq. (14)."""
        return tf.reshape(self.gate(gate_input), [-1, self.num_aux, self.units])

    def call(self, query, aux, gate_input, training=None, return_parts: bool = False):
        gates = self.gates(gate_input)
        tokens = tf.stack(list(aux), axis=1) * gates  # [B, n, d]  eq. (14)-(15)
        x0 = tf.reshape(tokens, [-1, self.num_aux * self.units])
        x = x0
        for layer in self.cross:  # eq. (16)
            x = layer(x0, x)
        tokens = tf.reshape(x, [-1, self.num_aux, self.units])
        out, weights = self.attention(query[:, None, :], tokens, return_attention_scores=True)  # eq. (17)
        return (out[:, 0, :], gates, weights[:, :, 0, :]) if return_parts else out[:, 0, :]

    def get_config(self):
        return {**super().get_config(), "num_aux": self.num_aux, "units": self.units, "num_heads": self.num_heads,
                "cross_layers": self.cross_layers}
