"""Multi-seed model comparison (`python -m run.compare`): sweep, aggregation, and the report writers.

A sweep trains every (model, learning rate, seed) of a grid through the shared trainer, one run directory each
(`<out_dir>/runs/<model>-s<seed>`, or `<model>-lr<lr>-s<seed>` with a learning-rate grid). Runs whose
`metrics.json` exists are not trained again, and a run killed part-way resumes from its last finished epoch
(`trainer.train` + BackupAndRestore), so an interrupted sweep started again with the same command only trains what
is missing. A run directory that was made with other settings (epochs, batch size, learning rate,
hyper-parameters...) is refused, never silently reused.

Aggregation (SPEC §4):
  * model selection on validation only: for each model, the learning rate with the best mean validation AUC over
    its seeds is selected; only that learning rate's runs enter the table (the grid's validation AUCs are kept);
  * mean and sample standard deviation (ddof = 1; 0 for a single seed) over seeds of test AUC, Logloss, GAUC
    (impression-weighted, see `metrics.py`), training examples/s;
  * RelaImpr = (AUC_model - 0.5) / (AUC_DIN - 0.5) - 1 from the mean test AUCs (the table's figure); the JSON also
    keeps the seed-paired values (model seed s against DIN seed s) with their mean and std.

Writers: `markdown_report` (report.md), `write_json_atomic` (report.json), `plot_report` (report.png: test-AUC bars
with std error bars, and per-run validation-AUC learning curves from each run's epochs.jsonl).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from mmctr_tf.data.schema import read_jsonl
from mmctr_tf.evaluation.metrics import rela_impr

METRICS = "metrics.json"
CONFIG = "config.json"
EPOCHS_LOG = "epochs.jsonl"
BASELINE = "din"
STD_NOTE = "std = sample standard deviation over seeds (ddof = 1; 0 with one seed)"
RELA_NOTE = ("RelaImpr = (AUC_model - 0.5) / (AUC_DIN - 0.5) - 1 on the mean test AUCs (SPEC §4); seed-paired "
             "values are in report.json")
DEFAULT_GAUC_WEIGHTING = "impression-weighted mean of per-group AUC over groups with both classes"
# TrainConfig fields a finished or partial run must share with the sweep that reuses it
CHECKED_FIELDS = ("model", "dataset", "seed", "learning_rate", "epochs", "batch_size", "lr_decay", "patience",
                  "steps_per_epoch")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: str
    seed: int
    learning_rate: float
    run_dir: str


def lr_tag(lr: float) -> str:
    return f"{float(lr):g}"


def plan_runs(models: Sequence[str], seeds: Sequence[int], learning_rates: Sequence[float], out_dir: str,
              lr_in_name: Optional[bool] = None) -> List[RunSpec]:
    """The runs of a sweep, model by model, then learning rate, then seed. Run directories are
    `<out_dir>/runs/<model>-s<seed>`, with `-lr<lr>` before the seed when `lr_in_name` (default: more than one
    learning rate)."""
    if not models:
        raise ValueError("compare: no models given (--models)")
    if not seeds:
        raise ValueError("compare: no seeds (--seeds must be >= 1)")
    if not learning_rates:
        raise ValueError("compare: no learning rates")
    if len(set(models)) != len(models):
        raise ValueError(f"compare: --models lists a model twice: {list(models)}")
    if lr_in_name is None:
        lr_in_name = len(learning_rates) > 1
    specs = []
    for m in models:
        for lr in learning_rates:
            for s in seeds:
                name = f"{m}-lr{lr_tag(lr)}-s{s}" if lr_in_name else f"{m}-s{s}"
                specs.append(RunSpec(m, int(s), float(lr), os.path.join(out_dir, "runs", name)))
    return specs


def run_config(base, spec: RunSpec):
    """The TrainConfig of one run: `base` (a TrainConfig) with the run's model, seed, learning rate and dir."""
    return dataclasses.replace(base, model=spec.model, seed=spec.seed, learning_rate=spec.learning_rate,
                               run_dir=spec.run_dir)


def check_run_dir(cfg, hparams: dict) -> None:
    """Refuses to reuse a run directory whose config.json was written with other settings than `cfg`/`hparams`."""
    path = os.path.join(cfg.run_dir, CONFIG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    want = dataclasses.asdict(cfg)
    for key in CHECKED_FIELDS:
        if old["train"].get(key) != want[key]:
            raise ValueError(f"{path}: run was made with {key}={old['train'].get(key)!r}, this sweep asks for "
                             f"{key}={want[key]!r}; use another --out_dir (or delete that run directory)")
    hp = {k: v for k, v in hparams.items() if v is not None}
    if old.get("hparams") != json.loads(json.dumps(hp)):
        raise ValueError(f"{path}: run was made with hyper-parameters {old.get('hparams')}, this sweep asks for {hp}; "
                         f"use another --out_dir (or delete that run directory)")


def read_run(spec: RunSpec) -> dict:
    """A run record for aggregation: the spec, status ("ok" when metrics.json exists, "failed" when it records a
    split the final evaluation could not read, else "missing"), metrics and the per-epoch log."""
    rec = {"model": spec.model, "seed": spec.seed, "learning_rate": spec.learning_rate, "run_dir": spec.run_dir,
           "status": "missing", "metrics": None, "epochs": []}
    path = os.path.join(spec.run_dir, METRICS)
    if os.path.exists(path):
        with open(path) as f:
            rec["metrics"] = json.load(f)
        errors = [f"{k}: {v['error']}" for k, v in rec["metrics"].items() if isinstance(v, dict) and "error" in v]
        rec["status"] = "failed" if errors else "ok"  # a split the final evaluation could not read
        if errors:
            rec["error"] = "; ".join(errors)
    rec["epochs"] = read_jsonl(os.path.join(spec.run_dir, EPOCHS_LOG))
    return rec


def _hms(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_sweep(specs: Sequence[RunSpec], base_cfg, hparams_of: Dict[str, dict], train_fn: Optional[Callable] = None,
              log: Callable = print, clear_session: bool = True) -> List[dict]:
    """Trains (or skips, or resumes) every run of `specs` in order and returns their records (see `read_run`).

    `train_fn(cfg, hparams, log=...)` defaults to `trainer.train`. A run that raises is recorded with status
    "failed" and its error, and the sweep goes on (KeyboardInterrupt stops it; started again, it resumes). One
    progress line per run before and after it: run k/N, model, seed, learning rate, elapsed time, and the ETA from
    the mean duration of the runs trained so far in this process times the runs still to train.
    """
    if train_fn is None:
        from mmctr_tf.training.trainer import train as train_fn
    cfgs = [run_config(base_cfg, s) for s in specs]
    for cfg, spec in zip(cfgs, specs):  # refuse mismatched run dirs before training anything
        check_run_dir(cfg, hparams_of.get(spec.model, {}))
    n = len(specs)
    pending = {s.run_dir for s in specs if read_run(s)["status"] != "ok"}
    log(f"[compare] {n} runs, {n - len(pending)} finished already, {len(pending)} to train")
    t0 = time.perf_counter()
    durations: List[float] = []
    records = []

    def eta() -> Optional[float]:
        if not pending:
            return 0.0
        return float(np.mean(durations)) * len(pending) if durations else None

    for k, (spec, cfg) in enumerate(zip(specs, cfgs), 1):
        tag = f"run {k}/{n} {spec.model} seed {spec.seed} lr {lr_tag(spec.learning_rate)}"
        finished = spec.run_dir not in pending
        elapsed = time.perf_counter() - t0
        if finished:
            log(f"[compare] {tag}: finished already, skipped | elapsed {_hms(elapsed)} | ETA {_hms(eta())}")
            records.append(read_run(spec))
            continue
        log(f"[compare] {tag}: training -> {spec.run_dir} | elapsed {_hms(elapsed)} | ETA {_hms(eta())}")
        start = time.perf_counter()
        error = None
        try:
            train_fn(cfg, hparams_of.get(spec.model, {}), log=lambda *a: log("    " + " ".join(map(str, a))))
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the sweep; it is reported
            error = f"{type(e).__name__}: {e}"
        durations.append(time.perf_counter() - start)
        pending.discard(spec.run_dir)
        rec = read_run(spec)
        if error is not None:
            rec["status"], rec["error"] = "failed", error
            log(f"[compare] {tag}: FAILED ({error}) | elapsed {_hms(time.perf_counter() - t0)} | ETA {_hms(eta())}")
        else:
            m = rec["metrics"] or {}
            val = m.get("valid", {}).get("auc", float("nan"))
            log(f"[compare] {tag}: done in {_hms(durations[-1])}, valid AUC {val:.4f} (best epoch "
                f"{m.get('best_epoch')}) | elapsed {_hms(time.perf_counter() - t0)} | ETA {_hms(eta())}")
        records.append(rec)
        if clear_session:  # free the finished model's graph/variables before the next run
            import keras

            keras.backend.clear_session()
            gc.collect()
    return records


# ------------------------------------------------------------------------------------------------ aggregation
def summary(values: Sequence[Optional[float]]) -> dict:
    """{"mean", "std" (ddof = 1, 0 for one value), "n", "values"} over the values that are not None; mean and std
    are None when there is none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(vals), "values": list(values)}


def _get(metrics: dict, *path):
    x = metrics
    for p in path:
        if not isinstance(x, dict) or p not in x:
            return None
        x = x[p]
    return x


def select_learning_rate(records: Sequence[dict]) -> tuple:
    """Model selection on validation only. `records`: the finished runs of ONE model. Returns (selected lr, grid)
    where grid is [{"learning_rate", "valid_auc": summary over seeds, "seeds"}] and the selected lr has the best
    mean validation AUC (ties: the first in the grid's order)."""
    lrs: List[float] = []
    for r in records:
        if r["learning_rate"] not in lrs:
            lrs.append(r["learning_rate"])
    grid, best, best_value = [], None, -math.inf
    for lr in lrs:
        runs = [r for r in records if r["learning_rate"] == lr]
        s = summary([_get(r["metrics"], "valid", "auc") for r in runs])
        grid.append({"learning_rate": lr, "valid_auc": s, "seeds": [r["seed"] for r in runs]})
        if s["mean"] is not None and s["mean"] > best_value:
            best, best_value = lr, s["mean"]
    return best, grid


def aggregate(records: Sequence[dict], models: Optional[Sequence[str]] = None, baseline: str = BASELINE,
              meta: Optional[dict] = None) -> dict:
    """The report (a JSON-able dict) from run records (`read_run` / `run_sweep`). See the module docstring."""
    models = list(models) if models is not None else list(dict.fromkeys(r["model"] for r in records))
    report = {**(meta or {}), "baseline": baseline if baseline in models else None, "std": STD_NOTE,
              "rela_impr_definition": RELA_NOTE, "models": [], "notes": [],
              "failed": [{"model": r["model"], "seed": r["seed"], "learning_rate": r["learning_rate"],
                          "run_dir": r["run_dir"], "error": r.get("error")}
                         for r in records if r["status"] != "ok"]}
    weighting = {_get(r["metrics"], "gauc_weighting") for r in records if r["status"] == "ok"} - {None}
    report["gauc_weighting"] = "; ".join(sorted(weighting)) if weighting else DEFAULT_GAUC_WEIGHTING
    rows = {}
    for m in models:
        done = [r for r in records if r["model"] == m and r["status"] == "ok"]
        lr, grid = select_learning_rate(done)
        runs = sorted([r for r in done if r["learning_rate"] == lr], key=lambda r: r["seed"])
        row = {"model": m, "selected_learning_rate": lr, "lr_grid": grid, "n_seeds": len(runs),
               "seeds": [r["seed"] for r in runs], "planned_seeds": sorted({r["seed"] for r in records
                                                                          if r["model"] == m})}
        if not runs:
            report["notes"].append(f"{m}: no finished run; left out of the table")
            row["test"] = row["valid"] = None
            rows[m] = row
            continue
        ms = [r["metrics"] for r in runs]
        row["test"] = {k: summary([_get(x, "test", k) for x in ms]) for k in ("auc", "logloss", "gauc_user",
                                                                              "gauc_request")}
        row["valid"] = {k: summary([_get(x, "valid", k) for x in ms]) for k in ("auc", "logloss", "gauc_user")}
        row["train_examples_per_sec"] = summary([x.get("train_examples_per_sec") for x in ms])
        params = sorted({x.get("params") for x in ms} - {None})
        row["params"] = params[0] if len(params) == 1 else params
        row["best_epochs"] = [x.get("best_epoch") for x in ms]
        row["epochs_run"] = [x.get("epochs_run") for x in ms]
        row["runs"] = [{"seed": r["seed"], "run_dir": r["run_dir"], "valid": r["metrics"].get("valid"),
                        "test": r["metrics"].get("test"), "best_epoch": r["metrics"].get("best_epoch"),
                        "epochs_run": r["metrics"].get("epochs_run"), "params": r["metrics"].get("params"),
                        "train_examples_per_sec": r["metrics"].get("train_examples_per_sec"),
                        "val_auc_curve": [e.get("val_auc") for e in r["epochs"]]} for r in runs]
        if row["train_examples_per_sec"]["n"] < len(runs):
            report["notes"].append(f"{m}: training examples/s is known for {row['train_examples_per_sec']['n']} of "
                                   f"{len(runs)} runs (a run resumed after its last epoch trains no epoch to time)")
        if len(runs) < len(row["planned_seeds"]):
            report["notes"].append(f"{m}: {len(runs)} of {len(row['planned_seeds'])} seeds finished at the "
                                   f"selected learning rate")
        rows[m] = row
    base = rows.get(baseline)
    if base is None or not base.get("test"):
        why = (f"{baseline.upper()} ('{baseline}') is not among --models" if baseline not in models
               else f"{baseline.upper()} has no finished run")
        report["notes"].append(f"RelaImpr omitted: {why}")
        for row in rows.values():
            row["rela_impr"] = None
    else:
        b_auc = base["test"]["auc"]["mean"]
        b_by_seed = {r["seed"]: r["test"]["auc"] for r in base["runs"]}
        if not b_auc > 0.5:
            report["notes"].append(f"RelaImpr not meaningful: {baseline.upper()}'s mean test AUC {b_auc:.4f} is not "
                                   f"above 0.5 (the denominator AUC_DIN - 0.5 must be positive)")
        for row in rows.values():
            if not row.get("test"):
                row["rela_impr"] = None
                continue
            # RelaImpr is only defined against a baseline better than random (AUC_base > 0.5)
            paired = [rela_impr(r["test"]["auc"], b_by_seed[r["seed"]]) if b_by_seed[r["seed"]] > 0.5 else None
                      for r in row["runs"] if r["seed"] in b_by_seed]
            row["rela_impr"] = {"of_means": rela_impr(row["test"]["auc"]["mean"], b_auc) if b_auc > 0.5 else None,
                                "seed_paired": summary(paired)}
    report["models"] = [rows[m] for m in models]
    if any(len(r["lr_grid"]) > 1 for r in report["models"]):
        report["notes"].append("learning rate selected per model by the best mean VALIDATION AUC over seeds; only "
                               "the selected learning rate's runs are in the table")
    return report


# ------------------------------------------------------------------------------------------------ writers
def _pm(s: Optional[dict], digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown_report(report: dict) -> str:
    """report.md: a table of the selected runs, the grid's validation AUCs (when there is a grid), and notes."""
    rows = [r for r in report["models"] if r.get("test")]
    has_request = any(r["test"]["gauc_request"]["n"] for r in rows)
    has_grid = any(len(r["lr_grid"]) > 1 for r in report["models"])
    has_rela = report.get("baseline") is not None
    head = ["model", "lr", "seeds", "test AUC", "Logloss", "GAUC (user)"]
    head += ["GAUC (request)"] if has_request else []
    head += ["RelaImpr vs DIN"] if has_rela else []
    head += ["train ex/s", "params", "best epochs"]
    lines = []
    title = f"# Model comparison on {report.get('dataset', '?')}"
    lines += [title, ""]
    if report.get("command"):
        lines += ["Command:", "", "```", report["command"], "```", ""]
    settings = [f"{k} {report[k]}" for k in ("seeds", "epochs", "batch_size", "patience") if k in report]
    if settings:
        lines += ["Settings: " + ", ".join(str(s) for s in settings) + ".", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rela = r.get("rela_impr")
        cells = [r["model"], lr_tag(r["selected_learning_rate"]), f"{r['n_seeds']}", _pm(r["test"]["auc"]),
                 _pm(r["test"]["logloss"]), _pm(r["test"]["gauc_user"])]
        cells += [_pm(r["test"]["gauc_request"])] if has_request else []
        if has_rela:
            cells.append("n/a" if not rela or rela["of_means"] is None else f"{100 * rela['of_means']:+.2f}%")
        eps = r["train_examples_per_sec"]
        cells += [f"{eps['mean']:,.0f} ± {eps['std']:,.0f}" if eps["mean"] is not None else "n/a",
                  f"{r['params']:,}" if isinstance(r["params"], int) else str(r["params"]),
                  ", ".join(str(e) for e in r["best_epochs"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Test-split figures of each model's runs, mean ± std over seeds ({STD_NOTE}).",
              f"GAUC: {report['gauc_weighting']}; by user" + (" and by request." if has_request else "."),
              (RELA_NOTE + "." if has_rela else ""),
              "train ex/s: training examples per second of the epochs trained in the run's last process "
              "(first epoch included); only comparable between rows of one machine and one sweep.",
              "params: `model.count_params()`, frozen modality vector tables included.",
              "best epochs: the epoch selected on validation AUC, per seed.", ""]
    if has_grid:
        lines += ["## Learning-rate grid (validation AUC, mean ± std over seeds)", "",
                  "| model | lr | valid AUC | selected |", "|---|---|---|---|"]
        for r in report["models"]:
            for g in r["lr_grid"]:
                sel = "yes" if g["learning_rate"] == r["selected_learning_rate"] else ""
                lines.append(f"| {r['model']} | {lr_tag(g['learning_rate'])} | {_pm(g['valid_auc'])} | {sel} |")
        lines.append("")
    notes = list(report.get("notes", []))
    notes += [f"FAILED run {f['run_dir']}: {f['error']}" for f in report.get("failed", []) if f.get("error")]
    notes += [f"missing run {f['run_dir']}" for f in report.get("failed", []) if not f.get("error")]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(line for line in lines if line is not None)


def plot_report(report: dict, path: str) -> None:
    """report.png: (left) mean test AUC per model with std error bars; (right) validation AUC per epoch of every
    selected run (one colour per model, one line per seed, the selected epoch circled)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in report["models"] if r.get("test")]
    fig = Figure(figsize=(12, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax_bar, ax_curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    colors = [f"C{i}" for i in range(10)]
    names = [r["model"] for r in rows]
    means = np.array([r["test"]["auc"]["mean"] for r in rows], dtype=float)
    stds = np.array([r["test"]["auc"]["std"] for r in rows], dtype=float)
    x = np.arange(len(rows))
    if len(rows):
        ax_bar.bar(x, means, yerr=stds, capsize=6, color=[colors[i % 10] for i in x], alpha=0.85,
                   error_kw={"elinewidth": 1.5})
        lo = float(np.min(means - stds))
        hi = float(np.max(means + stds))
        pad = max(0.01, 0.25 * (hi - lo))
        ax_bar.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
        if lo - pad < 0.5 < hi + pad:
            ax_bar.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="random (AUC 0.5)")
            ax_bar.legend(loc="lower right", fontsize=8)
        for i, (mu, sd) in enumerate(zip(means, stds)):
            ax_bar.annotate(f"{mu:.4f}\n±{sd:.4f}", (i, mu + sd), xytext=(0, 4), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8)
    ax_bar.set_xticks(x)
    ax_bar.set_xticklabels([f"{n}\n(n={r['n_seeds']})" for n, r in zip(names, rows)])
    ax_bar.set_ylabel("test AUC (mean ± std over seeds)")
    ax_bar.set_title("Test AUC (y axis zoomed)")
    ax_bar.grid(axis="y", alpha=0.3)

    for i, r in enumerate(rows):
        c = colors[i % 10]
        for j, run in enumerate(r["runs"]):
            curve = [v for v in run["val_auc_curve"]]
            if not curve:
                continue
            ep = np.arange(1, len(curve) + 1)
            ax_curve.plot(ep, curve, "-o", color=c, alpha=0.8, markersize=3, linewidth=1.2,
                          label=r["model"] if j == 0 else None)
            b = run.get("best_epoch")
            if b and 1 <= b <= len(curve):
                ax_curve.plot([b], [curve[b - 1]], "o", markersize=9, markerfacecolor="none", color=c)
    last = max([len(run["val_auc_curve"]) for r in rows for run in r["runs"]] or [1])
    ax_curve.set_xlim(0.5, last + 0.5)
    if last <= 30:
        ax_curve.set_xticks(np.arange(1, last + 1))
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("validation AUC (Keras, 2000 thresholds)")
    ax_curve.set_title("Validation AUC per epoch (one line per seed; circle = selected epoch)")
    ax_curve.grid(alpha=0.3)
    if rows:
        ax_curve.legend(loc="best", fontsize=9)
    fig.suptitle(f"{report.get('dataset', '')}: selected learning rate per model, seeds {report.get('seeds', '')}",
                 fontsize=10)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)


def _jsonable(x):
    """NaN/inf -> None so report.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_report(report: dict, out_dir: str) -> Dict[str, str]:
    """Writes report.md, report.json and report.png into out_dir; returns their paths."""
    from mmctr_tf.data.schema import write_json_atomic

    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"report.{k}") for k in ("md", "json", "png")}
    tmp = paths["md"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(markdown_report(report))
    os.replace(tmp, paths["md"])
    write_json_atomic(paths["json"], _jsonable(report))
    plot_report(report, paths["png"])
    return paths


def compare(base_cfg, models: Sequence[str], seeds: Sequence[int], out_dir: str,
            hparams_of: Optional[Dict[str, dict]] = None, learning_rates: Optional[Sequence[float]] = None,
            lr_in_name: Optional[bool] = None, command: Optional[str] = None, train_fn: Optional[Callable] = None,
            log: Callable = print, baseline: str = BASELINE) -> dict:
    """Plans, runs (resuming) and reports a sweep; returns the report dict (also written to out_dir).

    base_cfg: a TrainConfig whose epochs, batch size, dataset... every run shares (model, seed, learning rate and
    run_dir are set per run). hparams_of: {model: hyper-parameters}. learning_rates: default [base_cfg's]."""
    lrs = [float(x) for x in (learning_rates or [base_cfg.learning_rate])]
    specs = plan_runs(models, seeds, lrs, out_dir, lr_in_name)
    hparams_of = hparams_of or {}
    records = run_sweep(specs, base_cfg, hparams_of, train_fn=train_fn, log=log)
    meta = {"command": command, "dataset": base_cfg.dataset, "out_dir": out_dir, "seeds": list(seeds),
            "learning_rates": lrs, "epochs": base_cfg.epochs, "batch_size": base_cfg.batch_size,
            "patience": base_cfg.patience, "hparams": {m: hparams_of.get(m, {}) for m in models},
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = aggregate(records, models, baseline, meta)
    paths = write_report(report, out_dir)
    log(f"[compare] report: {paths['md']}, {paths['json']}, {paths['png']}")
    return report
