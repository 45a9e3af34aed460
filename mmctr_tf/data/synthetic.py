"""Synthetic multimodal CTR data with a known answer: the embedded default dataset (`--dataset=synthetic`).

Generative story (all seeded):
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
    history (hist_len 0).

Because the generator knows every true click probability, it reports the Bayes-optimal AUC of each split: AUC of
the true probabilities against the sampled labels, the ceiling any model can reach on that split.

Variants:
  * `default`: one impression per request; per user, impressions ordered in time, the first 80% train, the next
    10% validation, the last 10% test.
  * `industrial`: requests of several impressions (`request_id`, real non-clicks), a `ts` in seconds on one of
    `num_days` days, split by day: train on days [0, D-2), validate on day D-2, test on day D-1.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Dict

import numpy as np

from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.schema import SPLITS, Schema, write_manifest
from mmctr_tf.data.tfrecord import ShardedWriter
from mmctr_tf.evaluation.metrics import auc as exact_auc


@dataclasses.dataclass
class SyntheticConfig:
    num_users: int = 5000
    num_items: int = 4000
    num_cates: int = 20
    text_attrs: int = 8
    image_attrs: int = 8
    dim: int = 32
    latent_dim: int = 8
    seq_len: int = 50
    min_hist: int = 5
    max_hist: int = 60
    impressions_per_user: int = 24
    variant: str = "default"  # or "industrial"
    items_per_request: int = 4  # industrial only
    num_days: int = 8  # industrial only
    missing_image_rate: float = 0.02
    cold_start_rate: float = 0.02
    vector_noise: float = 0.6
    # click model
    b0: float = -2.6
    b_cate: float = 1.0
    b_text: float = 1.2
    b_image: float = 1.2
    b_synergy: float = 2.0
    item_bias_std: float = 0.4
    user_bias_std: float = 0.3
    zipf: float = 1.1
    table_dtype: str = "float32"
    num_shards: int = 4
    compression: str = "GZIP"
    seed: int = 0


def config_for(dataset: str, **overrides) -> SyntheticConfig:
    """Generator settings of the named synthetic datasets: `synthetic` (default variant, L = 50) and
    `synthetic_industrial` (requests, days, L = 64 as in the DMAE industrial setup)."""
    if dataset == "synthetic_industrial":
        overrides = {"variant": "industrial", "seq_len": 64, **overrides}
    return dataclasses.replace(SyntheticConfig(), **overrides)


def _click_logit(cfg: SyntheticConfig, w: Dict[str, np.ndarray], users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True click logit for user/item index arrays of the same shape."""
    cate_match = (w["item_cate"][items] == w["user_cates"][users, 0]) | (w["item_cate"][items] == w["user_cates"][users, 1])
    t_match = w["item_text"][items] == w["user_text"][users]
    m_match = w["item_image"][items] == w["user_image"][users]
    return (cfg.b0 + w["user_bias"][users] + w["item_bias"][items] + cfg.b_cate * cate_match
            + cfg.b_text * t_match + cfg.b_image * m_match + cfg.b_synergy * (t_match & m_match))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def generate(cfg: SyntheticConfig):
    """Returns (schema, split columns, vector tables as float arrays + present masks, world) in memory."""
    if cfg.variant not in ("default", "industrial"):
        raise ValueError(f"synthetic: unknown variant '{cfg.variant}' (default | industrial)")
    rng = np.random.default_rng(cfg.seed)
    I, U = cfg.num_items, cfg.num_users
    # Items are 1..I (0 is padding); arrays below are indexed by item id, row 0 unused.
    ranks = rng.permutation(I) + 1.0
    pop = np.concatenate([[0.0], ranks ** (-cfg.zipf)])
    pop /= pop.sum()
    cate_w = np.arange(1, cfg.num_cates + 1) ** -0.8
    w = {
        "pop": pop,
        "item_cate": np.concatenate([[0], rng.choice(cfg.num_cates, size=I, p=cate_w / cate_w.sum()) + 1]),
        "item_text": np.concatenate([[-1], rng.integers(0, cfg.text_attrs, I)]),
        "item_image": np.concatenate([[-1], rng.integers(0, cfg.image_attrs, I)]),
        "item_bias": np.concatenate([[0.0], rng.normal(0, cfg.item_bias_std, I)]),
        "user_cates": rng.choice(cfg.num_cates, size=(U, 2), p=cate_w / cate_w.sum()) + 1,
        "user_text": rng.integers(0, cfg.text_attrs, U),
        "user_image": rng.integers(0, cfg.image_attrs, U),
        "user_bias": rng.normal(0, cfg.user_bias_std, U),
    }
    # Frozen vectors: attribute part + common latent part + noise.
    z = rng.normal(0, 1, (I + 1, cfg.latent_dim))
    vectors = {}
    for name, attr, n_attr in (("text", w["item_text"], cfg.text_attrs), ("image", w["item_image"], cfg.image_attrs)):
        protos = rng.normal(0, 1, (n_attr, cfg.dim))
        common = rng.normal(0, 1, (cfg.latent_dim, cfg.dim)) / np.sqrt(cfg.latent_dim) * 0.5
        v = protos[np.maximum(attr, 0)] + z @ common + rng.normal(0, cfg.vector_noise, (I + 1, cfg.dim))
        v[0] = 0.0
        vectors[name] = v.astype(np.float32)
    present = {"text": np.ones(I + 1, bool), "image": rng.random(I + 1) >= cfg.missing_image_rate}
    for name in present:
        present[name][0] = False
        vectors[name][~present[name]] = 0.0

    # Click histories: popularity-weighted exposures accepted with the click probability, in time order.
    n_cand = max(8 * cfg.max_hist, 200)
    hist_target = rng.integers(cfg.min_hist, cfg.max_hist + 1, U)
    hists = np.zeros((U, cfg.max_hist), np.int64)
    hist_n = np.zeros(U, np.int64)
    for start in range(0, U, 2048):
        users = np.arange(start, min(U, start + 2048))
        cand = rng.choice(I + 1, size=(len(users), n_cand), p=pop)
        p = _sigmoid(_click_logit(cfg, w, users[:, None], cand))
        acc = rng.random(p.shape) < p
        order = np.argsort(~acc, axis=1, kind="stable")
        clicked = np.take_along_axis(cand, order, axis=1)[:, : cfg.max_hist]
        n = np.minimum(acc.sum(1), hist_target[users])
        clicked[np.arange(cfg.max_hist)[None, :] >= n[:, None]] = 0
        hists[users] = clicked
        hist_n[users] = n

    # Impressions: E per user at increasing history positions tau; targets from a flattened popularity.
    E = cfg.impressions_per_user
    per_request = cfg.items_per_request if cfg.variant == "industrial" else 1
    n_req = max(1, E // per_request)
    req_user = np.repeat(np.arange(U), n_req)
    frac = np.sort(rng.random((U, n_req)), axis=1).reshape(-1)
    n_u = hist_n[req_user]
    lo = np.minimum(cfg.min_hist, n_u)  # impressions start once the user has a few behaviours ...
    tau = np.minimum(lo + np.floor(frac * (n_u - lo + 1)).astype(np.int64), n_u)
    tau[rng.random(len(tau)) < cfg.cold_start_rate] = 0  # ... except some cold-start requests (hist_len 0)
    exp_p = pop ** 0.6
    exp_p[0] = 0
    exp_p /= exp_p.sum()
    users = np.repeat(req_user, per_request)
    taus = np.repeat(tau, per_request)
    req_ids = np.repeat(np.arange(1, len(req_user) + 1), per_request)
    fracs = np.repeat(frac, per_request)
    targets = rng.choice(I + 1, size=len(users), p=exp_p)
    p_true = _sigmoid(_click_logit(cfg, w, users, targets))
    labels = (rng.random(len(users)) < p_true).astype(np.float32)

    L = cfg.seq_len
    hist_len = np.minimum(taus, L)
    start = taus - hist_len
    pos = start[:, None] + np.arange(L)[None, :]
    valid = np.arange(L)[None, :] < hist_len[:, None]
    hist_item = np.where(valid, hists[users[:, None], np.minimum(pos, cfg.max_hist - 1)], 0)
    hist_cate = np.where(valid, w["item_cate"][hist_item], 0)

    cols = {
        "user_id": users + 1, "item_id": targets, "cate_id": w["item_cate"][targets],
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
    splits = {name: {k: v[split_of == i] for k, v in cols.items()} for i, name in enumerate(SPLITS)}

    schema = Schema(
        seq_len=L,
        vocab={"user_id": U + 1, "item_id": I + 1, "cate_id": cfg.num_cates + 1},
        modalities={"text": cfg.dim, "image": cfg.dim},
        optional=("request_id", "ts") if cfg.variant == "industrial" else (),
    )
    return schema, splits, vectors, present, w


def build(out_dir: str, cfg: SyntheticConfig, log=print) -> dict:
    """Generates the dataset into `out_dir` (atomically: a temp dir renamed at the end) and returns the manifest."""
    t0 = time.time()
    schema, splits, vectors, present, _ = generate(cfg)
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    manifest = {"name": os.path.basename(out_dir.rstrip("/")), "source": "synthetic",
                "generator": dataclasses.asdict(cfg), "schema": schema.to_dict(),
                "compression": cfg.compression or "", "splits": {}, "tables": {}}
    for split, cols in splits.items():
        with ShardedWriter(tmp, split, schema, cfg.num_shards, cfg.compression) as wr:
            wr.write(cols)
        entry = wr.summary()
        n = len(cols["label"])
        entry["positive_rate"] = float(cols["label"].mean()) if n else 0.0
        entry["bayes_auc"] = float(exact_auc(cols["label"], cols["p_true"])) if n else float("nan")
        entry["users"] = int(len(np.unique(cols["user_id"])))
        manifest["splits"][split] = entry
    for name, v in vectors.items():
        table = tables_lib.quantize(v, present[name], cfg.table_dtype)
        manifest["tables"][name] = tables_lib.save_table(os.path.join(tmp, "tables"), name, table)
    manifest["stats"] = {"users": cfg.num_users, "items": cfg.num_items, "categories": cfg.num_cates,
                         "seconds": round(time.time() - t0, 2)}
    write_manifest(tmp, manifest)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return manifest
