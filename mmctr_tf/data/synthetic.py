"""Synthetic multimodal CTR data with a known answer: the embedded default dataset (`--dataset=synthetic`).

Every draw is seeded, and the generator knows every true click probability, so it reports the Bayes-optimal AUC
of each split (AUC of the true probabilities against the sampled labels): the ceiling any model can reach there.
Nothing here reads model code. Two generative stories (`SyntheticConfig.story`):

Story `interest` (the default): interest follows what the user clicked recently, in each modality.
  * Items have a category (Zipf over `num_cates` categories) and a popularity (Zipf over a random order of the
    items: a long tail of items that are rarely shown and rarely clicked). In each modality (text, image) an item
    has a hidden content vector z = unit(0.8 c + 0.6 e) of `latent_dim` dimensions: c the direction of one of
    `topics` topics, e its own direction. Text and image topics are drawn independently of each other and of the
    category, so the two modalities disagree on which items are alike. Expected cosines: 0.64 for two items of
    one topic, 0 otherwise.
  * Frozen vectors are noisy but informative: v = sqrt(dim) z B + N(0, vector_noise^2) per component (B: random
    orthonormal rows, so the signal has unit variance per component), i.e. the cosine of two vectors is about
    cos(z, z') / (1 + vector_noise^2) plus noise. Only the vectors reveal z; ids and categories do not. A
    `missing_image_rate` share of items has no image vector (present flag 0; its z still drives clicks).
  * A user's history is a stream of clicks, oldest first: the first is a popularity draw; each next one is, with
    probability `stay_rate`, an item of the same text topic or the same image topic (popularity-weighted) as one
    of the user's last 3 clicks, otherwise a new popularity draw (interests drift).
  * An impression at history point tau (the user has made tau clicks) shows a target that is, with probability
    `related_rate`, an item of the text or image topic of one of the last 3 clicks, otherwise any item, both
    drawn with weights popularity^0.6. With the last W = min(window, seq_len) clicks before tau weighted by
    recency^age (age 0 = the latest click),
        S_m = sum_a w_a cos(z_m(target), z_m(click_a)) / sum_a w_a            for m = text, image
        F   = sum_a w_a [cate(target) = cate(click_a)] / sum_a w_a
    (all 0 with an empty history), the click probability is
        sigmoid(b0 + a_u + b_pop pop(target) + b_cate F + b_text S_text + b_image S_image
                + b_synergy max(S_text, 0) max(S_image, 0))
    with a_u ~ N(0, user_bias_std^2) (0 by default) and pop = the log popularity, standardised over the items as
    they are shown. The last term is the text-AND-image synergy: it pays only when the recent clicks are alike to
    the target in both modalities.
  An ID-only model sees categories and can learn popularity and the co-clicks of frequent items; only the vectors
  tell which tail items are alike. A model that knows this formula but sees only the noisy vectors stays a little
  below the Bayes AUC (README, "The synthetic default, and what it can show").

Story `attribute` (the earlier generator, kept for the capability tests that build their own worlds):
  * Items have a category (Zipf), a *text attribute* t (e.g. material: "waterproof") and an *image attribute* m
    (e.g. colour: "green"), a shared latent z, a popularity (Zipf: a long tail of rarely seen items) and a bias.
  * Frozen vectors are noisy projections with a common part (z, seen by both modalities) and a modality-specific
    part: text = A_t onehot(t) + C_t z + noise, image = A_m onehot(m) + C_m z + noise. The attributes are NOT
    given as ids: only the vectors reveal them. A small fraction of items has no image vector (missing flag).
  * Users prefer two categories (drawn like item categories), one text attribute t_u and one image attribute m_u.
  * Click probability: sigmoid(b0 + a_u + b_i + bc [c_i in C_u] + bt [t_i = t_u] + bm [m_i = m_u]
    + bs [t_i = t_u AND m_i = m_u]); the last term is the text-AND-image *synergy* ("waterproof and green").
  * A user's history = the items they clicked, drawn from the same click model over popularity-weighted exposures,
    so the history reveals the preferences; impressions (target, label ~ Bernoulli(p)) happen at increasing
    points of that history, after the first `min_hist` behaviours, except a `cold_start_rate` share with an empty
    history (hist_len 0); targets are drawn from popularity^0.6.
  With the same config, this story gives exactly the data the generator gave before the `interest` story existed.

Both stories: impressions start once the user has `min_hist` clicks, except a `cold_start_rate` share with an empty
history (hist_len 0). Variants (`SyntheticConfig.variant`):
  * `default`: one impression per request; per user, impressions ordered in time, the first 80% train, the next
    10% validation, the last 10% test.
  * `industrial`: requests of several impressions (`request_id`, real non-clicks), a `ts` in seconds on one of
    `num_days` days, split by day: train on days [0, D-2), validate on day D-2, test on day D-1.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import multiprocessing
import os
import pickle
import tempfile
import time
from typing import Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.schema import SPLITS, Schema, write_manifest
from mmctr_tf.data.tfrecord import ShardedWriter, frame_block
from mmctr_tf.evaluation.metrics import auc as exact_auc

STORIES = ("interest", "attribute")
MODALITIES = ("text", "image")

# Fields whose default depends on the story (None = the story's value below). The `attribute` values are the ones
# the generator always had, so worlds built with story="attribute" are unchanged.
STORY_DEFAULTS = {
    "interest": {"num_items": 6000, "impressions_per_user": 40, "latent_dim": 16, "vector_noise": 0.3, "zipf": 1.0,
                 "b0": -3.2, "b_cate": 0.5, "b_text": 3.5, "b_image": 3.5, "b_synergy": 4.0, "user_bias_std": 0.0},
    "attribute": {"num_items": 4000, "impressions_per_user": 24, "latent_dim": 8, "vector_noise": 0.6, "zipf": 1.1,
                  "b0": -2.6, "b_cate": 1.0, "b_text": 1.2, "b_image": 1.2, "b_synergy": 2.0, "user_bias_std": 0.3},
}


@dataclasses.dataclass
class SyntheticConfig:
    """Generator settings. `story` is chosen at construction: fields left None take the story's default
    (`STORY_DEFAULTS`), so `dataclasses.replace(cfg, story=...)` keeps the other story's values; build a new config
    instead."""

    story: str = "interest"  # or "attribute" (module docstring)
    num_users: int = 5000
    num_items: Optional[int] = None
    num_cates: int = 20
    text_attrs: int = 8  # attribute story
    image_attrs: int = 8  # attribute story
    dim: int = 32
    latent_dim: Optional[int] = None
    seq_len: int = 50
    min_hist: int = 5
    max_hist: int = 60
    impressions_per_user: Optional[int] = None
    variant: str = "default"  # or "industrial"
    items_per_request: int = 4  # industrial only
    num_days: int = 8  # industrial only
    missing_image_rate: float = 0.02
    cold_start_rate: float = 0.02
    vector_noise: Optional[float] = None
    # interest story: world and behaviour
    topics: int = 32
    stay_rate: float = 0.9
    related_rate: float = 0.5
    window: int = 10
    recency: float = 0.7
    # click model (b_pop: interest story; item_bias_std: attribute story)
    b0: Optional[float] = None
    b_cate: Optional[float] = None
    b_text: Optional[float] = None
    b_image: Optional[float] = None
    b_synergy: Optional[float] = None
    b_pop: float = 0.2
    item_bias_std: float = 0.4
    user_bias_std: Optional[float] = None
    zipf: Optional[float] = None
    table_dtype: str = "float32"
    num_shards: int = 4
    compression: str = "GZIP"
    seed: int = 0
    chunk_users: int = 0  # > 0: generate and write users in chunks of this size (bounded memory; `generate_chunks`)
    workers: int = 1  # chunked generation: processes generating and encoding chunks (0 = one per CPU core)

    def __post_init__(self):
        if self.story not in STORIES:
            raise ValueError(f"synthetic: unknown story '{self.story}' ({' | '.join(STORIES)})")
        for name, value in STORY_DEFAULTS[self.story].items():
            if getattr(self, name) is None:
                if name == "latent_dim" and self.story == "interest":
                    value = min(value, self.dim)  # the interest story's latents live inside the vectors
                setattr(self, name, value)


def config_for(dataset: str, **overrides) -> SyntheticConfig:
    """Generator settings of the named synthetic datasets (`PRESETS`): `synthetic` (default variant, L = 50),
    `synthetic_industrial` (requests, days, L = 64 as in the DMAE industrial setup), and their large, chunked
    forms `synthetic_scale` and `synthetic_industrial_scale`."""
    if dataset not in PRESETS:
        raise ValueError(f"synthetic: unknown dataset '{dataset}' ({', '.join(PRESETS)})")
    return SyntheticConfig(**{**PRESETS[dataset], **overrides})


# `synthetic_scale`: the default story at a large size (1M users, 200k items, 10 impressions per user = 10M
# examples), generated in chunks of users so memory stays bounded, by one process per CPU core; sizes can be
# overridden (run.make_data flags).
SCALE_PRESET = {"num_users": 1_000_000, "num_items": 200_000, "num_cates": 100, "impressions_per_user": 10,
                "chunk_users": 20_000, "num_shards": 8, "workers": 0}
INDUSTRIAL = {"variant": "industrial", "seq_len": 64}
# `synthetic_industrial_scale`: DMAE's industrial setup (dmae.md Table 1, §5.2) in shape at 1M users / 200k items:
# requests of 4 impressions with real non-clicks, 4 requests per user over 22 days (train on 20, validate on day 21,
# test on day 22), histories up to 100 clicks cut to L = 64, ~420 items per category (the paper's 1.65M / 3,949).
INDUSTRIAL_SCALE_PRESET = {**INDUSTRIAL, "num_users": 1_000_000, "num_items": 200_000, "num_cates": 480,
                           "impressions_per_user": 16, "num_days": 22, "max_hist": 100, "chunk_users": 20_000,
                           "num_shards": 16, "workers": 0}
PRESETS = {"synthetic": {}, "synthetic_industrial": INDUSTRIAL, "synthetic_scale": SCALE_PRESET,
           "synthetic_industrial_scale": INDUSTRIAL_SCALE_PRESET}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _cdf(p: np.ndarray) -> np.ndarray:
    """The cumulative distribution numpy's `Generator.choice(len(p), p=p)` searches (the same floats)."""
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return cdf


class _SearchRight:
    """`np.searchsorted(cum, x, "right")` (the number of entries <= x) for many random queries into one long
    non-decreasing `cum` of non-negative floats, through a guide table: `per_entry * len(cum)` equal-width buckets
    over [0, cum[-1]], each holding the answer for its lower edge. A query starts at the guide of the bucket below
    its own (so float rounding never starts it past its answer) and steps right while the entry is <= x: the same
    indices as searchsorted, 3-7x faster than searchsorted (4-7x than searchsorted on sorted queries) on 4.8M
    queries into the 200k-entry cdfs of the attribute story's popularity and exposure (at most 10 steps there)."""

    def __init__(self, cum: np.ndarray, per_entry: int = 4):
        cum = np.asarray(cum, np.float64)
        buckets = per_entry * len(cum)
        self.cum = np.append(cum, np.inf)  # the sentinel stops a query >= cum[-1] at len(cum)
        self.scale = buckets / cum[-1]
        self.guide = np.searchsorted(cum, np.arange(buckets) * (cum[-1] / buckets), "right")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        k = (x * self.scale).astype(np.int64) - 1
        np.clip(k, 0, len(self.guide) - 1, out=k)
        idx = self.guide[k]
        active = np.flatnonzero(self.cum[idx] <= x)
        while active.size:
            idx[active] += 1
            active = active[self.cum[idx[active]] <= x[active]]
        return idx


def _choice(rng: np.random.Generator, search: _SearchRight, shape) -> np.ndarray:
    """`rng.choice(len(p), size=shape, p=p)` for `search = _SearchRight(_cdf(p))`: the same draws and the same state
    of `rng` after (numpy takes one uniform per sample and searches the cdf on its right side), without choice's
    per-call checks and cumulative sum."""
    return search(rng.random(shape).reshape(-1)).reshape(shape)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class _Sampler:
    """Draws items with probability proportional to `weight` (row 0 has weight 0), optionally restricted to the
    group (topic) of a given item: inverse-CDF over items sorted by group, so a draw is one `searchsorted`."""

    def __init__(self, weight: np.ndarray, group: Optional[np.ndarray] = None):
        group = np.zeros(len(weight), np.int64) if group is None else group
        self.group = group
        self.order = np.argsort(group[1:], kind="stable") + 1  # item ids, sorted by group
        self.cum = np.cumsum(weight[self.order])
        self.search = _SearchRight(self.cum)
        g = group[self.order]
        ids = np.arange(int(group.max()) + 1)
        self.lo, self.hi = np.searchsorted(g, ids, "left"), np.searchsorted(g, ids, "right")

    def draw(self, u: np.ndarray, like: Optional[np.ndarray] = None) -> np.ndarray:
        """One item per uniform `u` in [0, 1): from all items, or from the group of the item `like`."""
        if like is None:
            lo, hi, x = 0, len(self.cum), u * self.cum[-1]
        else:
            g = self.group[like]
            lo, hi = self.lo[g], self.hi[g]
            base = np.where(lo > 0, self.cum[np.maximum(lo - 1, 0)], 0.0)
            x = base + u * (self.cum[hi - 1] - base)
        return self.order[np.clip(self.search(x), lo, hi - 1)]


# ------------------------------------------------------------------------------------------------ story: attribute
class _AttributeStory:
    """Fixed user preferences for a category, a text attribute and an image attribute (module docstring)."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        """Item and user parameters of the click model and the frozen vectors (+ present masks); O(items + users)."""
        self.cfg = cfg
        n_items, n_users = cfg.num_items, cfg.num_users
        # Items are 1..n_items (0 is padding); arrays below are indexed by item id, row 0 unused.
        ranks = rng.permutation(n_items) + 1.0
        pop = np.concatenate([[0.0], ranks ** (-cfg.zipf)])
        pop /= pop.sum()
        cate_w = np.arange(1, cfg.num_cates + 1) ** -0.8
        w = {
            "pop": pop,
            "item_cate": np.concatenate([[0], rng.choice(cfg.num_cates, size=n_items, p=cate_w / cate_w.sum()) + 1]),
            "item_text": np.concatenate([[-1], rng.integers(0, cfg.text_attrs, n_items)]),
            "item_image": np.concatenate([[-1], rng.integers(0, cfg.image_attrs, n_items)]),
            "item_bias": np.concatenate([[0.0], rng.normal(0, cfg.item_bias_std, n_items)]),
            "user_cates": rng.choice(cfg.num_cates, size=(n_users, 2), p=cate_w / cate_w.sum()) + 1,
            "user_text": rng.integers(0, cfg.text_attrs, n_users),
            "user_image": rng.integers(0, cfg.image_attrs, n_users),
            "user_bias": rng.normal(0, cfg.user_bias_std, n_users),
        }
        # Frozen vectors: attribute part + common latent part + noise.
        z = rng.normal(0, 1, (n_items + 1, cfg.latent_dim))
        vectors = {}
        for name, attr, n_attr in (("text", w["item_text"], cfg.text_attrs),
                                   ("image", w["item_image"], cfg.image_attrs)):
            protos = rng.normal(0, 1, (n_attr, cfg.dim))
            common = rng.normal(0, 1, (cfg.latent_dim, cfg.dim)) / np.sqrt(cfg.latent_dim) * 0.5
            v = protos[np.maximum(attr, 0)] + z @ common + rng.normal(0, cfg.vector_noise, (n_items + 1, cfg.dim))
            v[0] = 0.0
            vectors[name] = v.astype(np.float32)
        present = {"text": np.ones(n_items + 1, bool), "image": rng.random(n_items + 1) >= cfg.missing_image_rate}
        for name in present:
            present[name][0] = False
            vectors[name][~present[name]] = 0.0
        self.w, self.vectors, self.present = w, vectors, present
        exp_p = w["pop"] ** 0.6  # targets are exposed with popularity^0.6
        exp_p[0] = 0
        exp_p /= exp_p.sum()
        self.pop_search, self.exposure_search = _SearchRight(_cdf(w["pop"])), _SearchRight(_cdf(exp_p))

    def logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """True click logit for user/item index arrays of the same shape."""
        cfg, w = self.cfg, self.w
        cate = w["item_cate"][items]
        cate_match = (cate == w["user_cates"][users, 0]) | (cate == w["user_cates"][users, 1])
        t_match = w["item_text"][items] == w["user_text"][users]
        m_match = w["item_image"][items] == w["user_image"][users]
        return (cfg.b0 + w["user_bias"][users] + w["item_bias"][items] + cfg.b_cate * cate_match
                + cfg.b_text * t_match + cfg.b_image * m_match + cfg.b_synergy * (t_match & m_match))

    def histories(self, user_idx: np.ndarray, rng: np.random.Generator):
        """Click histories of the users `user_idx` (0-based): popularity-weighted exposures accepted with the click
        probability, in time order. Returns (hists [n, max_hist] item ids, hist_n [n])."""
        cfg, n_users = self.cfg, len(user_idx)
        n_cand = max(8 * cfg.max_hist, 200)
        hist_target = rng.integers(cfg.min_hist, cfg.max_hist + 1, n_users)
        hists = np.zeros((n_users, cfg.max_hist), np.int64)
        hist_n = np.zeros(n_users, np.int64)
        for start in range(0, n_users, 2048):
            local = np.arange(start, min(n_users, start + 2048))
            users = user_idx[local]
            cand = _choice(rng, self.pop_search, (len(users), n_cand))
            p = _sigmoid(self.logit(users[:, None], cand))
            acc = rng.random(p.shape) < p
            order = np.argsort(~acc, axis=1, kind="stable")
            clicked = np.take_along_axis(cand, order, axis=1)[:, : cfg.max_hist]
            n = np.minimum(acc.sum(1), hist_target[local])
            clicked[np.arange(cfg.max_hist)[None, :] >= n[:, None]] = 0
            hists[local] = clicked
            hist_n[local] = n
        return hists, hist_n

    def targets(self, rng: np.random.Generator, n: int, hists, local, taus) -> np.ndarray:
        return _choice(rng, self.exposure_search, n)

    def click_prob(self, users, targets, hists, local, taus) -> np.ndarray:
        return _sigmoid(self.logit(users, targets))


# ------------------------------------------------------------------------------------------------ story: interest
_RECENT = 3  # related items (histories, targets) are drawn like one of the user's last 3 clicks
_BLOCK = 16384  # rows per block when gathering history windows (bounded memory)


class _InterestStory:
    """Interest follows the similarity, per modality, to what the user clicked recently (module docstring)."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        self.cfg = cfg
        n_items, n_users, C, k = cfg.num_items, cfg.num_users, cfg.num_cates, cfg.latent_dim
        ranks = rng.permutation(n_items) + 1.0
        pop = np.concatenate([[0.0], ranks ** (-cfg.zipf)])
        pop /= pop.sum()
        log_pop = np.log(pop[1:])
        exposure = pop ** 0.6
        cate_w = np.arange(1, C + 1) ** -0.8
        item_cate = np.concatenate([[0], rng.choice(C, size=n_items, p=cate_w / cate_w.sum()) + 1])
        self.item_cate = item_cate
        shown = exposure[1:] / exposure[1:].sum()  # standardise log popularity over the items shown as targets
        mean = float(shown @ log_pop)
        sd = max(float(np.sqrt(shown @ (log_pop - mean) ** 2)), 1e-12)
        self.pop_score = np.concatenate([[0.0], (log_pop - mean) / sd])
        self.user_bias = rng.normal(0, cfg.user_bias_std, n_users)
        self.samplers = {"popular": _Sampler(pop), "exposure": _Sampler(exposure)}
        self.latent, self.vectors, self.present = {}, {}, {}
        self.related = {"popular": {}, "exposure": {}}  # per weighting, per modality: draws within a topic
        for m in MODALITIES:
            topic = rng.integers(0, cfg.topics, n_items + 1)
            centre = _unit(rng.normal(size=(cfg.topics, k)))
            z = _unit(0.8 * centre[topic] + 0.6 * _unit(rng.normal(size=(n_items + 1, k))))
            z[0] = 0.0
            basis = np.linalg.qr(rng.normal(size=(cfg.dim, k)))[0].T  # k orthonormal rows of length dim
            v = np.sqrt(cfg.dim) * z @ basis + rng.normal(0, cfg.vector_noise, (n_items + 1, cfg.dim))
            present = np.ones(n_items + 1, bool) if m == "text" else rng.random(n_items + 1) >= cfg.missing_image_rate
            present[0] = False
            v[~present] = 0.0
            self.latent[m] = z.astype(np.float32)
            self.related["popular"][m] = _Sampler(pop, topic)
            self.related["exposure"][m] = _Sampler(exposure, topic)
            self.vectors[m], self.present[m] = v.astype(np.float32), present
        self.w = {"pop": pop, "item_cate": item_cate, "user_bias": self.user_bias, **{
            f"{m}_latent": self.latent[m] for m in MODALITIES}}

    def _related_or(self, weighting: str, rng, recent: np.ndarray, p_related: float) -> np.ndarray:
        """Items drawn by `weighting` (popular: clicks; exposure: popularity^0.6), or, with probability `p_related`
        where `recent` (an item id, 0 = none) is given, drawn the same way within the text or image topic (one of
        the two, evenly) of the item `recent`."""
        n = len(recent)
        rel = (rng.random(n) < p_related) & (recent > 0)
        by_text = rng.random(n) < 0.5
        out = np.empty(n, np.int64)
        out[~rel] = self.samplers[weighting].draw(rng.random(n - int(rel.sum())))
        for m, sel in (("text", rel & by_text), ("image", rel & ~by_text)):
            out[sel] = self.related[weighting][m].draw(rng.random(int(sel.sum())), recent[sel])
        return out

    def _recent(self, rng, hists, local, taus) -> np.ndarray:
        """One of the last `_RECENT` clicks before history point `taus` (0 where the history is empty)."""
        lag = 1 + np.floor(rng.random(len(taus)) * np.minimum(taus, _RECENT)).astype(np.int64)
        return np.where(taus > 0, hists[local, np.maximum(taus - lag, 0)], 0)

    def histories(self, user_idx: np.ndarray, rng: np.random.Generator):
        cfg, n, H = self.cfg, len(user_idx), self.cfg.max_hist
        hist_n = rng.integers(cfg.min_hist, H + 1, n)
        hists = np.zeros((n, H), np.int64)
        rows = np.arange(n)
        for s in range(H):
            recent = self._recent(rng, hists, rows, np.full(n, s))
            hists[:, s] = self._related_or("popular", rng, recent, cfg.stay_rate)
        hists[np.arange(H)[None, :] >= hist_n[:, None]] = 0
        return hists, hist_n

    def targets(self, rng: np.random.Generator, n: int, hists, local, taus) -> np.ndarray:
        return self._related_or("exposure", rng, self._recent(rng, hists, local, taus), self.cfg.related_rate)

    def logit(self, users, targets, hists, local, taus) -> np.ndarray:
        """True click logit of each impression (module docstring); history windows are gathered in blocks."""
        cfg = self.cfg
        W = max(1, min(cfg.window, cfg.seq_len))
        age = np.arange(W)
        out = np.empty(len(targets), np.float64)
        for s in range(0, len(targets), _BLOCK):
            sl = slice(s, s + _BLOCK)
            t, tau = targets[sl], taus[sl]
            pos = tau[:, None] - 1 - age[None, :]  # [n, W], age 0 = the latest click
            weight = np.where(pos >= 0, cfg.recency ** age[None, :], 0.0)
            clicks = hists[local[sl, None], np.maximum(pos, 0)]
            norm = np.maximum(weight.sum(1), 1e-12)
            sim = {m: np.einsum("nwk,nk->nw", self.latent[m][clicks], self.latent[m][t]) for m in MODALITIES}
            s_text, s_image = ((weight * sim[m]).sum(1) / norm for m in MODALITIES)
            same_cate = (weight * (self.item_cate[clicks] == self.item_cate[t][:, None])).sum(1) / norm
            out[sl] = (cfg.b0 + self.user_bias[users[sl]] + cfg.b_pop * self.pop_score[t] + cfg.b_cate * same_cate
                       + cfg.b_text * s_text + cfg.b_image * s_image
                       + cfg.b_synergy * np.maximum(s_text, 0) * np.maximum(s_image, 0))
        return out

    def click_prob(self, users, targets, hists, local, taus) -> np.ndarray:
        return _sigmoid(self.logit(users, targets, hists, local, taus))


def _story(cfg: SyntheticConfig, rng: np.random.Generator):
    return (_InterestStory if cfg.story == "interest" else _AttributeStory)(cfg, rng)


def _impressions(cfg: SyntheticConfig, story, user_idx: np.ndarray, hists: np.ndarray, hist_n: np.ndarray,
                 rng: np.random.Generator, first_request: int = 1):
    """Impression columns of the users `user_idx` (whose histories are `hists`, `hist_n`) and each row's split
    index (0 train, 1 valid, 2 test). Request ids start at `first_request`."""
    U = len(user_idx)
    # Impressions: E per user at increasing history positions tau.
    E = cfg.impressions_per_user
    per_request = cfg.items_per_request if cfg.variant == "industrial" else 1
    n_req = max(1, E // per_request)
    req_local = np.repeat(np.arange(U), n_req)
    frac = np.sort(rng.random((U, n_req)), axis=1).reshape(-1)
    n_u = hist_n[req_local]
    lo = np.minimum(cfg.min_hist, n_u)  # impressions start once the user has a few behaviours ...
    tau = np.minimum(lo + np.floor(frac * (n_u - lo + 1)).astype(np.int64), n_u)
    tau[rng.random(len(tau)) < cfg.cold_start_rate] = 0  # ... except some cold-start requests (hist_len 0)
    local = np.repeat(req_local, per_request)
    users = user_idx[local]
    taus = np.repeat(tau, per_request)
    req_ids = np.repeat(np.arange(first_request, first_request + len(req_local)), per_request)
    fracs = np.repeat(frac, per_request)
    targets = story.targets(rng, len(users), hists, local, taus)
    p_true = story.click_prob(users, targets, hists, local, taus)
    labels = (rng.random(len(users)) < p_true).astype(np.float32)

    L = cfg.seq_len
    item_cate = story.w["item_cate"]
    hist_len = np.minimum(taus, L)
    start = taus - hist_len
    valid = np.arange(L)[None, :] < hist_len[:, None]
    # right-padded windows hists[u, start : start + hist_len]: rows of sliding-window views (a copy per row)
    ext = np.zeros((U, hists.shape[1] + L), np.int64)
    ext[:, : hists.shape[1]] = hists
    hist_item = sliding_window_view(ext, L, axis=1)[local, start] * valid
    hist_cate = sliding_window_view(item_cate[ext], L, axis=1)[local, start] * valid

    cols = {
        "user_id": users + 1, "item_id": targets, "cate_id": item_cate[targets],
        "hist_item_id": hist_item, "hist_cate_id": hist_cate, "hist_len": hist_len, "label": labels,
        "p_true": p_true,
    }
    if cfg.variant == "industrial":
        day = np.minimum((fracs * cfg.num_days).astype(np.int64), cfg.num_days - 1)
        cols["request_id"] = req_ids
        cols["ts"] = day * 86400 + (fracs * cfg.num_days * 86400 % 86400).astype(np.int64)
        split_of = np.where(day == cfg.num_days - 1, 2, np.where(day == cfg.num_days - 2, 1, 0))
    else:
        # rank of each impression within its user (impressions are already time-ordered per user)
        rank = np.tile(np.arange(E), U)[: len(users)]
        split_of = np.where(rank >= int(round(0.9 * E)), 2, np.where(rank >= int(round(0.8 * E)), 1, 0))
    return cols, split_of


def _schema(cfg: SyntheticConfig) -> Schema:
    return Schema(
        seq_len=cfg.seq_len,
        vocab={"user_id": cfg.num_users + 1, "item_id": cfg.num_items + 1, "cate_id": cfg.num_cates + 1},
        modalities={"text": cfg.dim, "image": cfg.dim},
        optional=("request_id", "ts") if cfg.variant == "industrial" else (),
    )


def _check(cfg: SyntheticConfig) -> None:
    if cfg.variant not in ("default", "industrial"):
        raise ValueError(f"synthetic: unknown variant '{cfg.variant}' (default | industrial)")
    if cfg.max_hist < 1 or cfg.min_hist > cfg.max_hist:
        raise ValueError(f"synthetic: need 1 <= max_hist and min_hist <= max_hist, got {cfg.min_hist}, {cfg.max_hist}")
    if cfg.story == "interest" and cfg.latent_dim > cfg.dim:
        raise ValueError(f"synthetic: latent_dim ({cfg.latent_dim}) must not exceed dim ({cfg.dim})")


def _by_split(cols: dict, split_of: np.ndarray) -> dict:
    """{split: columns of the rows of that split, in order}."""
    rows = [np.flatnonzero(split_of == i) for i in range(len(SPLITS))]
    return {name: {k: v[r] for k, v in cols.items()} for name, r in zip(SPLITS, rows)}


def generate(cfg: SyntheticConfig):
    """Returns (schema, split columns, vector tables as float arrays + present masks, world) in memory.

    One random stream for everything (world, then every user's history, then every impression): the data of a
    given config never changes. `chunk_users` is ignored here (see `generate_chunks`)."""
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    story = _story(cfg, rng)
    users = np.arange(cfg.num_users)
    hists, hist_n = story.histories(users, rng)
    cols, split_of = _impressions(cfg, story, users, hists, hist_n, rng)
    return _schema(cfg), _by_split(cols, split_of), story.vectors, story.present, story.w


def generate_chunks(cfg: SyntheticConfig):
    """Streaming variant for large sizes: (schema, vectors, present, world, iterator of per-chunk split columns).

    The world (item/user parameters, vectors: O(items + users)) is drawn from `seed`; then users are generated in
    chunks of `chunk_users`, chunk c from its own stream `default_rng([seed, 1, c])`, so memory is bounded by one
    chunk's examples and a chunk's data does not depend on the chunk before it (`build` generates chunks in
    parallel worker processes, `cfg.workers`). Same generative story and click model as `generate`, but other
    random draws: a chunked dataset differs from the unchunked one of the same config (statistics alike)."""
    _check(cfg)
    if cfg.chunk_users < 1:
        raise ValueError(f"synthetic: chunk_users must be >= 1 for the chunked generator, got {cfg.chunk_users}")
    story = _story(cfg, np.random.default_rng(cfg.seed))
    chunks = (_chunk_columns(cfg, story, c) for c in range(_num_chunks(cfg)))
    return _schema(cfg), story.vectors, story.present, story.w, chunks


def _num_chunks(cfg: SyntheticConfig) -> int:
    return -(-cfg.num_users // cfg.chunk_users)


def _chunk_columns(cfg: SyntheticConfig, story, c: int) -> dict:
    """Split columns of the users of chunk c (its own random stream)."""
    per_request = cfg.items_per_request if cfg.variant == "industrial" else 1
    n_req = max(1, cfg.impressions_per_user // per_request)
    a = c * cfg.chunk_users
    crng = np.random.default_rng([cfg.seed, 1, c])
    users = np.arange(a, min(cfg.num_users, a + cfg.chunk_users))
    hists, hist_n = story.histories(users, crng)
    cols, split_of = _impressions(cfg, story, users, hists, hist_n, crng, first_request=1 + a * n_req)
    return _by_split(cols, split_of)


def _framed(cfg: SyntheticConfig, schema: Schema, splits: dict) -> dict:
    """{split: (FramedBlock for `cfg.num_shards` shards, labels, true probabilities as float32, distinct users)}."""
    return {split: (frame_block(cols, schema, cfg.num_shards), cols["label"].astype(np.float32),
                    cols["p_true"].astype(np.float32), int(len(np.unique(cols["user_id"]))))
            for split, cols in splits.items()}


_WORKER: dict = {}  # a worker process's config, schema and world (set once by `_init_worker`)


def _init_worker(cfg: SyntheticConfig, story_path: str) -> None:
    with open(story_path, "rb") as f:
        story = pickle.load(f)
    _WORKER.update(cfg=cfg, schema=_schema(cfg), story=story)


def _framed_chunk(c: int) -> dict:
    """Chunk c generated and encoded (runs in a worker process)."""
    return _framed(_WORKER["cfg"], _WORKER["schema"], _chunk_columns(_WORKER["cfg"], _WORKER["story"], c))


def _framed_chunks(cfg: SyntheticConfig, schema: Schema, story):
    """Every chunk's `_framed` output, in chunk order; with `cfg.workers` != 1 from a pool of processes (0 = one
    per CPU core) that get the world once (without its vector tables) and hold at most a few chunks in flight.
    The processes are spawned, not forked (the caller may run TensorFlow's threads), so a script calling `build`
    needs the usual `if __name__ == "__main__":` guard; without it a worker dies while it starts, and
    `WorkerStartError` says so.

    The world goes to the workers through a temporary file, not through the process arguments: a spawned child
    runs the caller's script before it reads those, and Python's parent blocks for good on writing more than a pipe
    holds to a child that died meanwhile (the pipe's other end is still open in the parent)."""
    n = _num_chunks(cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(n, cfg.workers or cores)
    if workers <= 1:
        for c in range(n):
            yield _framed(cfg, schema, _chunk_columns(cfg, story, c))
        return
    light = copy.copy(story)
    light.vectors = light.present = None  # the workers draw examples; the tables are written here
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mmctr_synthetic_") as tmp:
        story_path = os.path.join(tmp, "story.pkl")
        with open(story_path, "wb") as f:
            pickle.dump(light, f, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                        initargs=(cfg, story_path)) as pool:
                pending = collections.deque()
                for c in range(n):
                    pending.append(pool.submit(_framed_chunk, c))
                    if len(pending) > workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
        except concurrent.futures.BrokenExecutor as e:  # the pool's BrokenProcessPool
            raise WorkerStartError(
                f"synthetic: a worker process died ({e}). Worker processes are spawned and import the calling "
                f"script again, so a script that calls synthetic.build needs `if __name__ == \"__main__\":` around "
                f"the call (or SyntheticConfig(workers=1), or `python -m run.make_data`)") from None


class WorkerStartError(RuntimeError):
    """A generator worker process died (most often: a calling script without the `__main__` guard)."""


def build(out_dir: str, cfg: SyntheticConfig, log=print) -> dict:
    """Generates the dataset into `out_dir` (atomically: a temp dir renamed at the end) and returns the manifest.

    `out_dir` is claimed first (`converters.output.atomic_output_dir`): another conversion writing it is refused
    with its pid, and an existing `out_dir` is replaced only when it is a synthetic dataset of the same name
    (`OutputDirRefused` otherwise, before anything is generated).
    With `cfg.chunk_users > 0` users are generated, encoded and written chunk by chunk (`generate_chunks`; by
    `cfg.workers` processes): memory holds the world, a few chunks' examples and each split's labels + true
    probabilities (for the Bayes AUC). The output does not depend on `workers`."""
    from mmctr_tf.data.converters.output import atomic_output_dir

    name = os.path.basename(out_dir.rstrip("/"))
    with atomic_output_dir(out_dir, name, source="synthetic", log=log) as tmp:
        return _build_into(tmp, name, cfg, log)


def _build_into(tmp: str, name: str, cfg: SyntheticConfig, log) -> dict:
    t0 = time.time()
    _check(cfg)
    chunked = cfg.chunk_users > 0
    schema = _schema(cfg)
    if chunked:
        story = _story(cfg, np.random.default_rng(cfg.seed))
        vectors, present = story.vectors, story.present
        blocks = _framed_chunks(cfg, schema, story)
    else:
        schema, splits, vectors, present, _ = generate(cfg)
        blocks = (block for block in [_framed(cfg, schema, splits)])
    manifest = {"name": name, "source": "synthetic",
                "generator": dataclasses.asdict(cfg), "schema": schema.to_dict(),
                "compression": cfg.compression or "", "splits": {}, "tables": {}}
    writers = {s: ShardedWriter(tmp, s, schema, cfg.num_shards, cfg.compression) for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    p_true = {s: [] for s in SPLITS}
    users = {s: 0 for s in SPLITS}
    done = 0
    try:
        for c, block in enumerate(blocks):
            for split, (framed, y, p, n_users) in block.items():
                writers[split].write_framed(framed)
                labels[split].append(y)
                p_true[split].append(p)
                users[split] += n_users  # chunks hold disjoint users, so per-chunk counts add up
            if chunked:
                done = min(cfg.num_users, done + cfg.chunk_users)
                if c % 10 == 9 or done == cfg.num_users:
                    log(f"[synthetic] {done}/{cfg.num_users} users, "
                        f"{sum(w.count for w in writers.values())} examples, {time.time() - t0:.0f} s")
        for w in writers.values():
            w.close()
    except BaseException:
        blocks.close()  # stops the worker processes
        for w in writers.values():
            w.abort()
        raise
    for split in SPLITS:
        entry = writers[split].summary()
        y = np.concatenate(labels[split]) if labels[split] else np.zeros(0, np.float32)
        p = np.concatenate(p_true[split]) if p_true[split] else np.zeros(0, np.float32)
        n = len(y)
        entry["positive_rate"] = float(y.mean()) if n else 0.0
        entry["bayes_auc"] = float(exact_auc(y, p)) if n else float("nan")
        entry["users"] = users[split]
        manifest["splits"][split] = entry
    del labels, p_true
    for name, v in vectors.items():
        table = tables_lib.quantize(v, present[name], cfg.table_dtype)
        manifest["tables"][name] = tables_lib.save_table(os.path.join(tmp, "tables"), name, table)
    manifest["stats"] = {"users": cfg.num_users, "items": cfg.num_items, "categories": cfg.num_cates,
                         "seconds": round(time.time() - t0, 2)}
    write_manifest(tmp, manifest)
    return manifest
