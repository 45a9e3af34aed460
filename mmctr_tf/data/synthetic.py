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
    chunk_users: int = 0  # > 0: generate and write users in chunks of this size (bounded memory; `generate_chunks`)


def config_for(dataset: str, **overrides) -> SyntheticConfig:
    """Generator settings of the named synthetic datasets: `synthetic` (default variant, L = 50),
    `synthetic_industrial` (requests, days, L = 64 as in the DMAE industrial setup) and `synthetic_scale` (the
    default variant at 1M users / 200k items / 10M examples, chunked: `SCALE_PRESET`)."""
    if dataset == "synthetic_industrial":
        overrides = {"variant": "industrial", "seq_len": 64, **overrides}
    elif dataset == "synthetic_scale":
        overrides = {**SCALE_PRESET, **overrides}
    return dataclasses.replace(SyntheticConfig(), **overrides)


# `synthetic_scale`: the default story at a large size (1M users, 200k items, 10 impressions per user = 10M
# examples), generated in chunks of users so memory stays bounded; sizes can be overridden (run.make_data flags).
SCALE_PRESET = {"num_users": 1_000_000, "num_items": 200_000, "num_cates": 100, "impressions_per_user": 10,
                "chunk_users": 20_000, "num_shards": 8}


def _click_logit(cfg: SyntheticConfig, w: Dict[str, np.ndarray], users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True click logit for user/item index arrays of the same shape."""
    cate_match = (w["item_cate"][items] == w["user_cates"][users, 0]) | (w["item_cate"][items] == w["user_cates"][users, 1])
    t_match = w["item_text"][items] == w["user_text"][users]
    m_match = w["item_image"][items] == w["user_image"][users]
    return (cfg.b0 + w["user_bias"][users] + w["item_bias"][items] + cfg.b_cate * cate_match
            + cfg.b_text * t_match + cfg.b_image * m_match + cfg.b_synergy * (t_match & m_match))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _world(cfg: SyntheticConfig, rng: np.random.Generator):
    """Item and user parameters of the click model and the frozen vectors (+ present masks); O(items + users)."""
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
    return w, vectors, present


def _histories(cfg: SyntheticConfig, w, user_idx: np.ndarray, rng: np.random.Generator):
    """Click histories of the users `user_idx` (0-based): popularity-weighted exposures accepted with the click
    probability, in time order. Returns (hists [n, max_hist] item ids, hist_n [n])."""
    I, U = cfg.num_items, len(user_idx)
    n_cand = max(8 * cfg.max_hist, 200)
    hist_target = rng.integers(cfg.min_hist, cfg.max_hist + 1, U)
    hists = np.zeros((U, cfg.max_hist), np.int64)
    hist_n = np.zeros(U, np.int64)
    for start in range(0, U, 2048):
        local = np.arange(start, min(U, start + 2048))
        users = user_idx[local]
        cand = rng.choice(I + 1, size=(len(users), n_cand), p=w["pop"])
        p = _sigmoid(_click_logit(cfg, w, users[:, None], cand))
        acc = rng.random(p.shape) < p
        order = np.argsort(~acc, axis=1, kind="stable")
        clicked = np.take_along_axis(cand, order, axis=1)[:, : cfg.max_hist]
        n = np.minimum(acc.sum(1), hist_target[local])
        clicked[np.arange(cfg.max_hist)[None, :] >= n[:, None]] = 0
        hists[local] = clicked
        hist_n[local] = n
    return hists, hist_n


def _impressions(cfg: SyntheticConfig, w, user_idx: np.ndarray, hists: np.ndarray, hist_n: np.ndarray,
                 rng: np.random.Generator, first_request: int = 1):
    """Impression columns of the users `user_idx` (whose histories are `hists`, `hist_n`) and each row's split
    index (0 train, 1 valid, 2 test). Request ids start at `first_request`."""
    U = len(user_idx)
    # Impressions: E per user at increasing history positions tau; targets from a flattened popularity.
    E = cfg.impressions_per_user
    per_request = cfg.items_per_request if cfg.variant == "industrial" else 1
    n_req = max(1, E // per_request)
    req_local = np.repeat(np.arange(U), n_req)
    frac = np.sort(rng.random((U, n_req)), axis=1).reshape(-1)
    n_u = hist_n[req_local]
    lo = np.minimum(cfg.min_hist, n_u)  # impressions start once the user has a few behaviours ...
    tau = np.minimum(lo + np.floor(frac * (n_u - lo + 1)).astype(np.int64), n_u)
    tau[rng.random(len(tau)) < cfg.cold_start_rate] = 0  # ... except some cold-start requests (hist_len 0)
    exp_p = w["pop"] ** 0.6
    exp_p[0] = 0
    exp_p /= exp_p.sum()
    local = np.repeat(req_local, per_request)
    users = user_idx[local]
    taus = np.repeat(tau, per_request)
    req_ids = np.repeat(np.arange(first_request, first_request + len(req_local)), per_request)
    fracs = np.repeat(frac, per_request)
    targets = rng.choice(cfg.num_items + 1, size=len(users), p=exp_p)
    p_true = _sigmoid(_click_logit(cfg, w, users, targets))
    labels = (rng.random(len(users)) < p_true).astype(np.float32)

    L = cfg.seq_len
    hist_len = np.minimum(taus, L)
    start = taus - hist_len
    pos = start[:, None] + np.arange(L)[None, :]
    valid = np.arange(L)[None, :] < hist_len[:, None]
    hist_item = np.where(valid, hists[local[:, None], np.minimum(pos, cfg.max_hist - 1)], 0)
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
    return cols, split_of


def _schema(cfg: SyntheticConfig) -> Schema:
    return Schema(
        seq_len=cfg.seq_len,
        vocab={"user_id": cfg.num_users + 1, "item_id": cfg.num_items + 1, "cate_id": cfg.num_cates + 1},
        modalities={"text": cfg.dim, "image": cfg.dim},
        optional=("request_id", "ts") if cfg.variant == "industrial" else (),
    )


def _check_variant(cfg: SyntheticConfig) -> None:
    if cfg.variant not in ("default", "industrial"):
        raise ValueError(f"synthetic: unknown variant '{cfg.variant}' (default | industrial)")


def generate(cfg: SyntheticConfig):
    """Returns (schema, split columns, vector tables as float arrays + present masks, world) in memory.

    One random stream for everything (world, then every user's history, then every impression): the data of a
    given config never changes. `chunk_users` is ignored here (see `generate_chunks`)."""
    _check_variant(cfg)
    rng = np.random.default_rng(cfg.seed)
    w, vectors, present = _world(cfg, rng)
    users = np.arange(cfg.num_users)
    hists, hist_n = _histories(cfg, w, users, rng)
    cols, split_of = _impressions(cfg, w, users, hists, hist_n, rng)
    splits = {name: {k: v[split_of == i] for k, v in cols.items()} for i, name in enumerate(SPLITS)}
    return _schema(cfg), splits, vectors, present, w


def generate_chunks(cfg: SyntheticConfig):
    """Streaming variant for large sizes: (schema, vectors, present, world, iterator of per-chunk split columns).

    The world (item/user parameters, vectors: O(items + users)) is drawn from `seed`; then users are generated in
    chunks of `chunk_users`, chunk c from its own stream `default_rng([seed, 1, c])`, so memory is bounded by one
    chunk's examples and a chunk's data does not depend on the chunk before it. Same generative story and click
    model as `generate`, but other random draws: a chunked dataset differs from the unchunked one of the same
    config (statistics alike)."""
    _check_variant(cfg)
    if cfg.chunk_users < 1:
        raise ValueError(f"synthetic: chunk_users must be >= 1 for the chunked generator, got {cfg.chunk_users}")
    rng = np.random.default_rng(cfg.seed)
    w, vectors, present = _world(cfg, rng)
    per_request = cfg.items_per_request if cfg.variant == "industrial" else 1
    n_req = max(1, cfg.impressions_per_user // per_request)

    def chunks():
        for c, a in enumerate(range(0, cfg.num_users, cfg.chunk_users)):
            crng = np.random.default_rng([cfg.seed, 1, c])
            users = np.arange(a, min(cfg.num_users, a + cfg.chunk_users))
            hists, hist_n = _histories(cfg, w, users, crng)
            cols, split_of = _impressions(cfg, w, users, hists, hist_n, crng, first_request=1 + a * n_req)
            del hists
            yield {name: {k: v[split_of == i] for k, v in cols.items()} for i, name in enumerate(SPLITS)}

    return _schema(cfg), vectors, present, w, chunks()


def build(out_dir: str, cfg: SyntheticConfig, log=print) -> dict:
    """Generates the dataset into `out_dir` (atomically: a temp dir renamed at the end) and returns the manifest.

    `out_dir` is claimed first (`converters.output.atomic_output_dir`): another conversion writing it is refused
    with its pid, and an existing `out_dir` is replaced only when it is a synthetic dataset of the same name
    (`OutputDirRefused` otherwise, before anything is generated).
    With `cfg.chunk_users > 0` users are generated and written chunk by chunk (`generate_chunks`): memory holds
    the world, one chunk's examples and each split's labels + true probabilities (for the Bayes AUC)."""
    from mmctr_tf.data.converters.output import atomic_output_dir

    with atomic_output_dir(out_dir, os.path.basename(out_dir.rstrip("/")), source="synthetic", log=log) as tmp:
        return _build_into(tmp, out_dir, cfg, log)


def _build_into(tmp: str, out_dir: str, cfg: SyntheticConfig, log) -> dict:
    t0 = time.time()
    chunked = cfg.chunk_users > 0
    if chunked:
        schema, vectors, present, _, chunks = generate_chunks(cfg)
    else:
        schema, splits, vectors, present, _ = generate(cfg)
        chunks = iter([splits])
    manifest = {"name": os.path.basename(out_dir.rstrip("/")), "source": "synthetic",
                "generator": dataclasses.asdict(cfg), "schema": schema.to_dict(),
                "compression": cfg.compression or "", "splits": {}, "tables": {}}
    writers = {s: ShardedWriter(tmp, s, schema, cfg.num_shards, cfg.compression) for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    p_true = {s: [] for s in SPLITS}
    users = {s: 0 for s in SPLITS}
    done = 0
    try:
        for c, block in enumerate(chunks):
            for split, cols in block.items():
                writers[split].write(cols)
                labels[split].append(cols["label"].astype(np.float32))
                p_true[split].append(cols["p_true"].astype(np.float32) if chunked else cols["p_true"])
                # chunks hold disjoint users, so per-chunk counts add up
                users[split] += int(len(np.unique(cols["user_id"])))
            if chunked:
                done = min(cfg.num_users, done + cfg.chunk_users)
                if c % 10 == 9 or done == cfg.num_users:
                    log(f"[synthetic] {done}/{cfg.num_users} users, "
                        f"{sum(w.count for w in writers.values())} examples, {time.time() - t0:.0f} s")
        for w in writers.values():
            w.close()
    except BaseException:
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
