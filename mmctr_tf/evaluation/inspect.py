"""What a trained model "looks at" for one example (`python -m run.inspect`), read from outside the model.

Nothing here changes a model: it calls `model.features(...)` and the model's named sub-layers in inference mode
and collects what each family exposes. Capabilities are detected, not model names, so subclasses (baselines on a
DIN backbone, ...) are covered too:

* history attention (DIN family): `model.backbone.attention_weights` (DIN's local activation unit, DIN paper
  eq. 3 / DMAE eq. 14: raw scores, padding 0, unless att_normalization=softmax) and, per modality,
  `model.mm_attention[m]` (MMConcat; Diff-MSIN eq. 2) over the valid history slots;
* DMAE: the similarity sequence r_m = (cos + 1) / 2 per modality (`model.similarities`), the interest-distribution
  label P (eq. 10, `InterestDistribution`) and the decoded Q (eq. 11-12, `InterestDecoder.decode`, every valid slot,
  no random mask), through `model.interest_distributions`; drawn like the paper's Fig. 3(b): x = time segment
  (oldest -> most recent), y = similarity interval (low -> high);
* Diff-MSIN: the MFE gates w_m (eq. 6-7: weight of modality m's specific expert against the shared one, mean over
  the d_e channels), the FDAF modality gates (eq. 14, mean over channels per auxiliary vector) and the FDAF
  attention of the ID query over the auxiliary tokens (eq. 17, mean over heads), recorded by the model's own
  inference pass (`DiffMSIN.forward(..., parts=)`).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf


def load_example(data, split: str, index: int, batch_size: int = 1024):
    """Example `index` (0-based, in file order: unshuffled splits are read deterministically) of `split`.
    Returns (inputs {name: np.ndarray with batch 1}, label float)."""
    n = data.examples(split)
    if not 0 <= index < n:
        raise ValueError(f"--example={index} is out of range: split '{split}' of {data.path} has {n} examples "
                         f"(0 .. {n - 1})")
    seen = 0
    for feats, label in data.tf_dataset(split, batch_size):
        b = int(label.shape[0])
        if index < seen + b:
            i = index - seen
            return {k: v.numpy()[i:i + 1] for k, v in feats.items()}, float(label.numpy()[i])
        seen += b
    raise ValueError(f"split '{split}' of {data.path}: example {index} not found (manifest says {n} examples)")


def _np(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def history_attention(model, feats) -> Dict[str, tuple]:
    """{source: (weights [B, L], attended slots [B, L] bool, normalised: bool)} of every target attention over
    the history the model has (a history slot without a vector of that modality is not attended). `normalised`
    is False for DIN's default attention (raw activation-unit scores, any sign; not softmax-normalised)."""
    out = {}
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "attention_weights"):
        w = backbone.attention_weights(feats["target"], feats["hist"], feats["mask"])
        normalised = getattr(backbone, "att_normalization", "none") != "none"
        out["id (backbone attention)"] = (_np(w), _np(feats["mask"]), normalised)
    mm = getattr(model, "mm_attention", None)
    if mm:
        for m in getattr(model, "modalities", []):
            if m not in mm or m not in feats["vec"]:
                continue
            tv, hv, _, hp = feats["vec"][m]
            valid = feats["mask"] & (hp > 0)
            _, w = mm[m](tv, hv, valid, training=False)
            out[f"{m} (target attention)"] = (_np(w), _np(valid), mm[m].normalization != "none")
    return out


def dmae_panels(model, inputs, feats) -> dict:
    """r per modality and {modality: (P, Q or None)} of a DMAE-like model (has `interest_distributions`)."""
    out = {"similarity": {}, "distribution": {}}
    if hasattr(model, "similarities"):
        for m, (r, mask) in model.similarities(feats).items():
            out["similarity"][m] = np.where(_np(mask), _np(r), np.nan)
    for m, (p, q) in model.interest_distributions(inputs).items():
        out["distribution"][m] = (_np(p), None if q is None else _np(q))
    return out


def diff_msin_panels(model, feats) -> dict:
    """Diff-MSIN's gates and fusion attention for a batch, from the model's own forward pass
    (`DiffMSIN.forward(..., parts=)`): {"mfe_gate": {modality: [B, d_e]}, "fdaf_gate": {aux: [B, d_e]},
    "fdaf_attention": {aux: [B]} (mean over heads), "prob": [B]}; parts of disabled modules are absent."""
    parts: dict = {}
    logit, _ = model.forward(feats, training=False, parts=parts)
    out = {"prob": _np(tf.sigmoid(logit))}
    if "mfe_gate" in parts:
        out["mfe_gate"] = {m: _np(g) for m, g in parts["mfe_gate"].items()}  # eq. (6)
    if "fdaf_gate" in parts:
        names = parts["aux_names"]
        gates, att = _np(parts["fdaf_gate"]), _np(parts["fdaf_attention"]).mean(axis=1)
        out["fdaf_gate"] = {n: gates[:, i, :] for i, n in enumerate(names)}  # eq. (14)
        out["fdaf_attention"] = {n: att[:, i] for i, n in enumerate(names)}  # eq. (17)
    return out


def explain(model, inputs) -> dict:
    """Everything the model exposes for a batch `inputs` (normally one example): {"prob", "ids", "hist_len",
    "attention", and "dmae" / "diff_msin" when the model has them}."""
    prob = _np(model(inputs, training=False)).reshape(-1)
    feats = model.features(inputs, training=False)
    ids = {k: _np(v) for k, v in feats["ids"].items()}
    out = {"model": model.name, "prob": prob, "ids": ids, "hist_len": _np(feats["hist_len"]),
           "attention": history_attention(model, feats), "notes": []}
    backbone = getattr(model, "backbone", None)
    if backbone is not None and not hasattr(backbone, "attention_weights"):
        out["notes"].append(f"backbone '{getattr(model, 'backbone_name', backbone.name)}' exposes no attention "
                            f"weights over the history")
    if hasattr(model, "interest_distributions"):
        out["dmae"] = dmae_panels(model, inputs, feats)
    if all(hasattr(model, a) for a in ("use_mfe", "use_src", "use_fdaf", "forward")):
        out["diff_msin"] = diff_msin_panels(model, feats)
    return out


# ------------------------------------------------------------------------------------------------ rendering
def _bar_row(ax, labels, values, title, ylabel, err=None, fmt="{:.3f}"):
    x = np.arange(len(labels))
    ax.bar(x, values, yerr=err, capsize=4, color=[f"C{i % 10}" for i in x], alpha=0.85)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    for i, v in enumerate(values):
        ax.annotate(fmt.format(v), (i, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)


def render(info: dict, path: str, title: str = "") -> None:
    """One PNG with every panel of `explain(...)` for example 0 of its batch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_valid = int(info["hist_len"][0])
    hist_items = info["ids"].get("hist_item_id", np.zeros([1, 0], np.int64))[0][:n_valid]
    seq_rows: List[tuple] = [(name + ("" if normalised else "\nraw scores"),
                              np.where(ok[0][:n_valid], w[0][:n_valid], np.nan))
                             for name, (w, ok, normalised) in info["attention"].items()]
    unnormalised = any(not normalised for _, _, normalised in info["attention"].values())
    dmae = info.get("dmae")
    if dmae:
        seq_rows += [(f"r = (cos+1)/2 ({m})", r[0][:n_valid]) for m, r in dmae["similarity"].items()]
    dm = info.get("diff_msin")
    dist = list(dmae["distribution"].items()) if dmae else []
    gate_axes = [k for k in ("mfe_gate", "fdaf_gate", "fdaf_attention") if dm and k in dm]
    heights = [1.6] * len(seq_rows) + ([3.2] if dist else []) + ([2.6] if gate_axes else [])
    empty = not heights
    if empty:
        heights = [1.0]
    fig = Figure(figsize=(13, 1.2 + sum(heights)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(len(heights), 1, height_ratios=heights)
    row = 0
    slots = np.arange(n_valid)
    if empty:  # a model without attention / distributions / gates: the prediction is all there is to show
        ax = fig.add_subplot(gs[0, 0])
        ax.axis("off")
        lines = [f"{info['model']} exposes no history attention, interest distribution or gates."]
        lines += info.get("notes", []) + [f"history items (oldest -> most recent): {hist_items.tolist()}"]
        ax.text(0.01, 0.5, "\n".join(lines), fontsize=10, va="center", ha="left", transform=ax.transAxes)
    for name, values in seq_rows:
        ax = fig.add_subplot(gs[row, 0])
        row += 1
        vals = np.nan_to_num(values.astype(float), nan=0.0)
        colors = ["C3" if v < 0 else "C0" for v in vals]
        ax.bar(slots, vals, color=colors, alpha=0.85)
        missing = np.isnan(values.astype(float))
        if missing.any():
            ax.plot(slots[missing], np.zeros(int(missing.sum())), "x", color="gray", markersize=8,
                    label="no vector of this modality (masked)")
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, borderaxespad=0.0)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        ax.set_xlim(-0.6, max(n_valid, 1) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        if n_valid <= 64:
            ax.set_xticks(slots)
            ax.set_xticklabels([str(i) for i in hist_items], fontsize=8 if n_valid <= 25 else 6,
                               rotation=0 if n_valid <= 25 else 90)
        ax.tick_params(axis="y", labelsize=7)
    if seq_rows:
        note = ("\n'raw scores': DIN's attention is not softmax-normalised (DIN paper; DeepCTR's default), so a bar "
                "is the activation unit's score\nfor that behaviour, of any sign (negative in red): compare the bars "
                "of one row with each other, not with weights in [0, 1]") if unnormalised else ""
        fig.axes[0].set_title("history (oldest -> most recent; tick = item id), only valid slots" + note, fontsize=9)
    if dist:
        cols = []
        for m, (p, q) in dist:
            cols.append((f"P ({m}): interest-distribution label, eq. (10)", p[0]))
            if q is not None:
                cols.append((f"Q ({m}): decoded, eq. (12)", q[0]))
        sub = gs[row, 0].subgridspec(1, len(cols))
        row += 1
        vmax = max(float(np.max(c[1])) for c in cols) or 1.0
        for j, (t, mat) in enumerate(cols):
            ax = fig.add_subplot(sub[0, j])
            # Fig. 3(b): x = time segment (old -> recent), y = similarity interval (low -> high)
            im = ax.imshow(mat.T, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
            segs, bins = mat.shape
            ax.set_title(t, fontsize=8)
            ax.set_xticks(np.arange(segs))
            ax.set_xticklabels([str(i + 1) for i in range(segs)])
            ax.set_yticks(np.arange(bins))
            ax.set_yticklabels([f"{b / bins:.2g}-{(b + 1) / bins:.2g}" for b in range(bins)])
            ax.set_xlabel("time segment (old -> recent)", fontsize=7)
            if j == 0:
                ax.set_ylabel("similarity r interval", fontsize=7)
            ax.tick_params(labelsize=6)
            if segs * bins <= 100:
                for a in range(segs):
                    for b in range(bins):
                        if mat[a, b] >= 0.05:
                            ax.text(a, b, f"{mat[a, b]:.2f}", ha="center", va="center", fontsize=5,
                                    color="black" if mat[a, b] > 0.6 * vmax else "white")
            cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
            cb.ax.tick_params(labelsize=6)
    if gate_axes:
        sub = gs[row, 0].subgridspec(1, len(gate_axes))
        row += 1
        for j, key in enumerate(gate_axes):
            ax = fig.add_subplot(sub[0, j])
            d = dm[key]
            labels = list(d)
            if key == "fdaf_attention":
                vals = [float(d[k][0]) for k in labels]
                _bar_row(ax, labels, vals, "FDAF attention of the ID query (eq. 17)\nmean over heads", "weight")
            else:
                vals = [float(d[k][0].mean()) for k in labels]
                err = [float(d[k][0].std()) for k in labels]
                t = ("MFE gate w_m: specific vs shared expert (eq. 6-7)" if key == "mfe_gate"
                     else "FDAF modality gates (eq. 14)")
                _bar_row(ax, labels, vals, t + "\nmean ± std over channels", "gate", err=err)
                ax.set_ylim(0, 1.05)
    fig.suptitle(title, fontsize=10)
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)


def describe(info: dict, label: Optional[float] = None) -> str:
    """Text lines for stdout: ids, label, predicted probability, notes."""
    ids = info["ids"]
    n = int(info["hist_len"][0])
    lines = [f"model {info['model']}"]
    scalars = [f"{k}={int(v[0])}" for k, v in ids.items() if np.ndim(v) == 1 and k != "hist_len"]
    lines.append("ids: " + " ".join(scalars) + f" hist_len={n}")
    for k, v in ids.items():
        if np.ndim(v) == 2:
            lines.append(f"{k}: {v[0][:n].tolist()}")
    lines.append(f"label {label if label is not None else '?'}  predicted probability {float(info['prob'][0]):.4f}")
    lines += [f"note: {x}" for x in info.get("notes", [])]
    return "\n".join(lines)


def inspect_run(run_dir: str, index: int, split: str = "test", out: Optional[str] = None,
                dataset: Optional[str] = None) -> dict:
    """Loads a run (`trainer.load_run`), explains example `index` of `split`, writes the PNG (default
    `<run_dir>/inspect_<split>_<index>.png`). Returns the info dict plus "label", "png" and "text"."""
    import json

    from mmctr_tf.data.datasets import Dataset, ensure_dataset
    from mmctr_tf.training.trainer import CONFIG, load_run

    cfg_path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: not a run directory (no {CONFIG})")
    with open(cfg_path) as f:
        record = json.load(f)
    path = dataset or record.get("data_path")
    if not path or not os.path.exists(path):
        path = ensure_dataset(record["train"]["dataset"], record["train"]["data_dir"])
    inputs, label = load_example(Dataset(path), split, index)  # a bad --example fails before the model loads
    model, record = load_run(run_dir)
    info = explain(model, inputs)
    info["label"] = label
    out = out or os.path.join(run_dir, f"inspect_{split}_{index}.png")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    title = (f"{record['train']['model']} ({run_dir}), {split} example {index}: label {label:g}, "
             f"predicted p = {float(info['prob'][0]):.4f}")
    render(info, out, title)
    info["png"] = out
    info["text"] = describe(info, label)
    return info
