"""Multi-seed model comparison (`python -m run.compare`): sweep, aggregation, and the report writers.

A sweep trains every (model, learning rate, batch size, seed) of a grid through the shared trainer, one run directory
each (`<out_dir>/runs/<model>-s<seed>`, `<model>-lr<lr>-bs<batch>-s<seed>` with a grid). Every run trains until early
stopping on validation AUC (`--patience`) or the `--epochs` cap; a run whose best epoch is its last trained epoch
was still improving when the cap stopped it and is reported as not converged. Runs whose
`metrics.json` exists are not trained again, and a run killed part-way resumes from its last finished epoch
(`trainer.train` + BackupAndRestore), so an interrupted sweep started again with the same command only trains what
is missing. A run directory that was made with other settings (epochs, batch size, learning rate,
hyper-parameters...) is refused, never silently reused.

Aggregation (SPEC §4):
  * model selection on validation only: for each model, the (learning rate, batch size) of the grid with the best
    mean validation AUC over its seeds is selected; only that configuration's runs enter the table (the grid's
    validation AUCs are kept);
  * mean and sample standard deviation (ddof = 1; none for a single seed) over seeds of test AUC, Logloss, GAUC
    (impression-weighted, see `metrics.py`), training examples/s;
  * cold start: test AUC and Logloss per bucket of the target item's training clicks (`metrics.click_buckets`),
    from each selected run's metrics.json, or re-scored from its best checkpoint for other bucket edges;
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
from mmctr_tf.evaluation.metrics import DEFAULT_CLICK_BUCKETS, rela_impr

METRICS = "metrics.json"
CONFIG = "config.json"
EPOCHS_LOG = "epochs.jsonl"
BASELINE = "din"
STD_NOTE = "std = sample standard deviation over seeds (ddof = 1; – with one seed)"
RELA_NOTE = ("RelaImpr = (AUC_model - 0.5) / (AUC_DIN - 0.5) - 1 on the mean test AUCs (SPEC §4); seed-paired "
             "values are in report.json")
DEFAULT_GAUC_WEIGHTING = "impression-weighted mean of per-group AUC over groups with both classes"
CONVERGED_NOTE = ("best / epochs: the epoch selected on validation AUC / the epochs trained, per seed; a run whose "
                  "best epoch is its last was still improving when the --epochs cap stopped it: **not converged**")
# TrainConfig fields a finished or partial run must share with the sweep that reuses it (but for `epochs`: a run
# stopped early at or before the sweep's cap is reused, `_same_under_cap`)
CHECKED_FIELDS = ("model", "dataset", "seed", "learning_rate", "epochs", "batch_size", "lr_decay", "patience",
                  "steps_per_epoch")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: str
    seed: int
    learning_rate: float
    batch_size: int
    run_dir: str


def lr_tag(lr: float) -> str:
    return f"{float(lr):g}"


def plan_runs(models: Sequence[str], seeds: Sequence[int], learning_rates: Sequence[float],
              batch_sizes: Sequence[int], out_dir: str, lr_in_name: Optional[bool] = None,
              batch_in_name: Optional[bool] = None) -> List[RunSpec]:
    """The runs of a sweep, model by model, then learning rate, then batch size, then seed. Run directories are
    `<out_dir>/runs/<model>-s<seed>`, with `-lr<lr>` when `lr_in_name` (default: more than one learning rate) and
    `-bs<batch size>` when `batch_in_name` (default: more than one batch size) before the seed."""
    if not models:
        raise ValueError("compare: no models given (--models)")
    if not seeds:
        raise ValueError("compare: no seeds (--seeds must be >= 1)")
    if not learning_rates or not batch_sizes:
        raise ValueError("compare: no learning rates or no batch sizes")
    for name, grid in (("--models", models), ("--learning_rates", learning_rates), ("--batch_sizes", batch_sizes)):
        if len(set(grid)) != len(grid):
            raise ValueError(f"compare: {name} lists a value twice: {list(grid)}")
    lr_in_name = len(learning_rates) > 1 if lr_in_name is None else lr_in_name
    batch_in_name = len(batch_sizes) > 1 if batch_in_name is None else batch_in_name
    specs = []
    for m in models:
        for lr in learning_rates:
            for bs in batch_sizes:
                for s in seeds:
                    name = (m + (f"-lr{lr_tag(lr)}" if lr_in_name else "") + (f"-bs{int(bs)}" if batch_in_name else "")
                            + f"-s{s}")
                    specs.append(RunSpec(m, int(s), float(lr), int(bs), os.path.join(out_dir, "runs", name)))
    return specs


def run_config(base, spec: RunSpec):
    """The TrainConfig of one run: `base` (a TrainConfig) with the run's model, seed, learning rate, batch size and
    dir."""
    return dataclasses.replace(base, model=spec.model, seed=spec.seed, learning_rate=spec.learning_rate,
                               batch_size=spec.batch_size, run_dir=spec.run_dir)


def check_run_dir(cfg, hparams: dict) -> None:
    """Refuses to reuse a run directory whose config.json was written with other settings than `cfg`/`hparams`."""
    path = os.path.join(cfg.run_dir, CONFIG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    want = dataclasses.asdict(cfg)
    for key in CHECKED_FIELDS:
        if old["train"].get(key) == want[key]:
            continue
        why = ""
        if key == "epochs":
            if _same_under_cap(cfg.run_dir, old, want[key]):
                continue
            why = " and was not stopped early at or before that many epochs, so it would train differently"
        raise ValueError(f"{path}: run was made with {key}={old['train'].get(key)!r}, this sweep asks for "
                         f"{key}={want[key]!r}{why}; use another --out_dir (or delete that run directory)")
    hp = {k: v for k, v in hparams.items() if v is not None}
    if old.get("hparams") != json.loads(json.dumps(hp)):
        raise ValueError(f"{path}: run was made with hyper-parameters {old.get('hparams')}, this sweep asks for {hp}; "
                         f"use another --out_dir (or delete that run directory)")


def _same_under_cap(run_dir: str, old: dict, epochs: int) -> bool:
    """Whether a finished run made under another epoch cap is the run this cap would make: it was stopped by early
    stopping (`patience` epochs after its best one) at or before `epochs`. Nothing else of training reads the cap
    (the learning rate decays per epoch), so the same seed gives the same epochs and the same stop."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        m = json.load(f)
    run, best, patience = m.get("epochs_run"), m.get("best_epoch"), old["train"].get("patience")
    if not all(isinstance(v, int) for v in (run, best, patience)):
        return False
    return run - best >= patience and run <= epochs


def read_run(spec: RunSpec) -> dict:
    """A run record for aggregation: the spec, status ("ok" when metrics.json exists, "failed" when it records a
    split the final evaluation could not read, else "missing"), metrics and the per-epoch log."""
    rec = {"model": spec.model, "seed": spec.seed, "learning_rate": spec.learning_rate,
           "batch_size": spec.batch_size, "run_dir": spec.run_dir, "status": "missing", "metrics": None,
           "epochs": []}
    path = os.path.join(spec.run_dir, METRICS)
    if os.path.exists(path):
        with open(path) as f:
            rec["metrics"] = json.load(f)
        from mmctr_tf.training.trainer import failed_splits

        errors = failed_splits(rec["metrics"])  # splits the final evaluation could not read
        rec["status"] = "failed" if errors else "ok"
        if errors:
            rec["error"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
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
    progress line per run before and after it: run k/N, model, seed, learning rate, batch size, elapsed time, and
    the ETA from the mean duration of the runs trained so far in this process times the runs still to train.
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
        tag = f"run {k}/{n} {spec.model} seed {spec.seed} lr {lr_tag(spec.learning_rate)} batch {spec.batch_size}"
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
    """{"mean", "std" (ddof = 1; None for one value), "n", "values"} over the values that are not None; mean and
    std are None when there is none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return {"mean": float(arr.mean()), "std": std, "n": len(vals), "values": list(values)}


def _get(metrics: dict, *path):
    x = metrics
    for p in path:
        if not isinstance(x, dict) or p not in x:
            return None
        x = x[p]
    return x


def converged(metrics: dict) -> Optional[bool]:
    """False when the run's best epoch is its last trained epoch (still improving when the --epochs cap stopped
    it), True when early stopping ended it after its best epoch; None when unknown."""
    best, run = metrics.get("best_epoch"), metrics.get("epochs_run")
    return None if best is None or run is None else best < run


def _grid_point(r: dict) -> tuple:
    return r["learning_rate"], r["batch_size"]


def select_config(records: Sequence[dict]) -> tuple:
    """Model selection on validation only. `records`: the finished runs of ONE model. Returns (selected
    (learning rate, batch size), grid) where grid is [{"learning_rate", "batch_size", "valid_auc": summary over
    seeds, "seeds", "best_epochs", "epochs_run"}] and the selected point has the best mean validation AUC (ties:
    the first in the grid's order)."""
    points = list(dict.fromkeys(_grid_point(r) for r in records))
    grid, best, best_value = [], None, -math.inf
    for point in points:
        runs = [r for r in records if _grid_point(r) == point]
        s = summary([_get(r["metrics"], "valid", "auc") for r in runs])
        grid.append({"learning_rate": point[0], "batch_size": point[1], "valid_auc": s,
                     "seeds": [r["seed"] for r in runs], "best_epochs": [r["metrics"].get("best_epoch") for r in runs],
                     "epochs_run": [r["metrics"].get("epochs_run") for r in runs]})
        if s["mean"] is not None and s["mean"] > best_value:
            best, best_value = point, s["mean"]
    return best, grid


def selected_runs(records: Sequence[dict], model: str) -> tuple:
    """(selected grid point or None, grid, the finished runs at that point sorted by seed) of one model."""
    done = [r for r in records if r["model"] == model and r["status"] == "ok"]
    point, grid = select_config(done)
    return point, grid, sorted([r for r in done if _grid_point(r) == point], key=lambda r: r["seed"])


def cold_start_summary(runs: Sequence[dict]) -> Optional[dict]:
    """Per bucket of training clicks: test AUC and Logloss over the runs' seeds (summary), with the bucket's
    examples and positives (the same test split for every run). None unless every run has buckets with the same
    edges."""
    tables = [_get(r["metrics"], "test", "cold_start") for r in runs]
    if not tables or any(t is None or t["edges"] != tables[0]["edges"] for t in tables):
        return None
    buckets = []
    for k, b in enumerate(tables[0]["buckets"]):
        per_seed = {key: summary([_finite(t["buckets"][k][key]) for t in tables]) for key in ("auc", "logloss")}
        buckets.append({"bucket": b["bucket"], "min_clicks": b["min_clicks"], "max_clicks": b["max_clicks"],
                        "examples": b["examples"], "positives": b["positives"], **per_seed})
    return {"definition": tables[0]["definition"], "edges": tables[0]["edges"], "buckets": buckets}


def _finite(x):
    return x if x is not None and math.isfinite(x) else None


def aggregate(records: Sequence[dict], models: Optional[Sequence[str]] = None, baseline: str = BASELINE,
              meta: Optional[dict] = None) -> dict:
    """The report (a JSON-able dict) from run records (`read_run` / `run_sweep`). See the module docstring."""
    models = list(models) if models is not None else list(dict.fromkeys(r["model"] for r in records))
    report = {**(meta or {}), "baseline": baseline if baseline in models else None, "std": STD_NOTE,
              "rela_impr_definition": RELA_NOTE, "converged_definition": CONVERGED_NOTE, "models": [], "notes": [],
              "failed": [{"model": r["model"], "seed": r["seed"], "learning_rate": r["learning_rate"],
                          "batch_size": r["batch_size"], "run_dir": r["run_dir"], "error": r.get("error")}
                         for r in records if r["status"] != "ok"]}
    weighting = {_get(r["metrics"], "gauc_weighting") for r in records if r["status"] == "ok"} - {None}
    report["gauc_weighting"] = "; ".join(sorted(weighting)) if weighting else DEFAULT_GAUC_WEIGHTING
    rows = {}
    for m in models:
        point, grid, runs = selected_runs(records, m)
        lr, bs = point or (None, None)
        row = {"model": m, "learning_rate": lr, "batch_size": bs, "grid": grid, "n_seeds": len(runs),
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
        row["converged"] = [converged(x) for x in ms]
        row["cold_start"] = cold_start_summary(runs)
        row["runs"] = [{"seed": r["seed"], "run_dir": r["run_dir"], "valid": r["metrics"].get("valid"),
                        "test": r["metrics"].get("test"), "best_epoch": r["metrics"].get("best_epoch"),
                        "epochs_run": r["metrics"].get("epochs_run"), "converged": converged(r["metrics"]),
                        "params": r["metrics"].get("params"),
                        "train_examples_per_sec": r["metrics"].get("train_examples_per_sec"),
                        "val_auc_curve": [e.get("val_auc") for e in r["epochs"]]} for r in runs]
        if row["train_examples_per_sec"]["n"] < len(runs):
            report["notes"].append(f"{m}: training examples/s is known for {row['train_examples_per_sec']['n']} of "
                                   f"{len(runs)} runs (a run resumed after its last epoch trains no epoch to time)")
        if len(runs) < len(row["planned_seeds"]):
            report["notes"].append(f"{m}: {len(runs)} of {len(row['planned_seeds'])} seeds finished at the "
                                   f"selected learning rate and batch size")
        stuck = [r["seed"] for r in runs if converged(r["metrics"]) is False]
        if stuck:
            report["notes"].append(f"{m}: NOT CONVERGED for seed(s) {', '.join(map(str, stuck))}: the best epoch is "
                                   f"the last one trained; raise --epochs")
        if row["cold_start"] is None:
            report["notes"].append(f"{m}: no cold-start buckets (a selected run has none with the requested edges)")
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
    if any(len(r["grid"]) > 1 for r in report["models"]):
        report["notes"].append("learning rate and batch size selected per model by the best mean VALIDATION AUC "
                               "over seeds; only the selected configuration's runs are in the table")
    return report


def rescore_cold_start(run_dir: str, edges: Sequence[int]) -> dict:
    """`metrics.click_buckets` of a finished run's best checkpoint on the test split of the data it was trained on,
    with other bucket edges than its metrics.json has."""
    from mmctr_tf.data.datasets import Dataset
    from mmctr_tf.evaluation.evaluate import evaluate_split
    from mmctr_tf.training.trainer import load_run

    model, record = load_run(run_dir)
    return evaluate_split(model, Dataset(record["data_path"]), "test", click_buckets=edges)["cold_start"]


def fill_cold_start(records: Sequence[dict], models: Sequence[str], edges: Sequence[int],
                    rescore: Callable = rescore_cold_start, log: Callable = print) -> None:
    """Gives every selected run test buckets with `edges`: kept from metrics.json when its edges are these,
    otherwise re-scored (in the record only; metrics.json is not rewritten). A run that cannot be re-scored keeps
    none (the report says so)."""
    edges = list(edges)
    for m in models:
        for r in selected_runs(records, m)[2]:
            if (_get(r["metrics"], "test", "cold_start") or {}).get("edges") == edges:
                continue
            try:
                r["metrics"]["test"]["cold_start"] = rescore(r["run_dir"], edges)
            except (OSError, ValueError) as e:
                r["metrics"]["test"].pop("cold_start", None)
                log(f"[compare] {r['run_dir']}: no cold-start buckets ({type(e).__name__}: {e})")


# ------------------------------------------------------------------------------------------------ writers
def _pm(s: Optional[dict], spec: str = ".4f") -> str:
    """"mean ± std"; "mean ± –" for one value (no spread measured)."""
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:{spec}} ± " + ("–" if s.get("std") is None else f"{s['std']:{spec}}")


def _epochs_cell(best: Sequence, run: Sequence) -> str:
    return ", ".join(f"{b}/{n}" for b, n in zip(best, run))


def _converged_cell(row: dict) -> str:
    flags = row["converged"]
    if all(flags):
        return "yes"
    not_conv = [str(s) for s, c in zip(row["seeds"], flags) if c is False]
    unknown = [str(s) for s, c in zip(row["seeds"], flags) if c is None]
    return "; ".join(([f"**no**: seed {', '.join(not_conv)}"] if not_conv else [])
                     + ([f"? seed {', '.join(unknown)}"] if unknown else []))


def cold_start_tables(report: dict) -> List[str]:
    """report.md lines: test AUC and Logloss per model and bucket of training clicks, and the bucket sizes."""
    rows = [r for r in report["models"] if r.get("test") and r.get("cold_start")]
    if not rows:
        return []
    first = rows[0]["cold_start"]
    names = [b["bucket"] for b in first["buckets"]]
    head = "| model | " + " | ".join(f"{n} clicks" for n in names) + " |"
    sep = "|" + "---|" * (len(names) + 1)
    lines = ["## Cold start: test metrics by the target item's training clicks", "",
             f"Clicks: {first['definition']}; buckets {', '.join(names)}. Mean ± std over the selected runs' seeds.",
             "", "Test AUC:", "", head, sep]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(_pm(b["auc"]) for b in r["cold_start"]["buckets"]) + " |")
    lines.append("| test examples (positives) | " + " | ".join(f"{b['examples']:,} ({b['positives']:,})"
                                                         for b in first["buckets"]) + " |")
    lines += ["", "Test Logloss:", "", head, sep]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(_pm(b["logloss"]) for b in r["cold_start"]["buckets"])
                     + " |")
    if any(r["cold_start"]["edges"] != first["edges"] for r in rows):
        lines += ["", "Bucket edges differ between models: read each row with its report.json edges."]
    return lines + [""]


def markdown_report(report: dict) -> str:
    """report.md: a table of the selected runs, the grid's validation AUCs (when there is a grid), the cold-start
    tables and notes."""
    rows = [r for r in report["models"] if r.get("test")]
    has_request = any(r["test"]["gauc_request"]["n"] for r in rows)
    has_grid = any(len(r["grid"]) > 1 for r in report["models"])
    has_rela = report.get("baseline") is not None
    head = ["model", "lr", "batch", "seeds", "test AUC", "Logloss", "GAUC (user)"]
    head += ["GAUC (request)"] if has_request else []
    head += ["RelaImpr vs DIN"] if has_rela else []
    head += ["train ex/s", "params", "best / epochs", "converged"]
    lines = []
    title = f"# Model comparison on {report.get('dataset', '?')}"
    lines += [title, ""]
    if report.get("command"):
        lines += ["Command:", "", "```", report["command"], "```", ""]
    names = {"seeds": "seeds", "learning_rates": "learning rates", "batch_sizes": "batch sizes",
             "epochs": "epochs at most", "patience": "patience"}
    settings = [f"{v} {report[k]}" for k, v in names.items() if k in report]
    if settings:
        lines += ["Settings: " + ", ".join(str(s) for s in settings) + ".", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rela = r.get("rela_impr")
        cells = [r["model"], lr_tag(r["learning_rate"]), str(r["batch_size"]), f"{r['n_seeds']}",
                 _pm(r["test"]["auc"]), _pm(r["test"]["logloss"]), _pm(r["test"]["gauc_user"])]
        cells += [_pm(r["test"]["gauc_request"])] if has_request else []
        if has_rela:
            cells.append("n/a" if not rela or rela["of_means"] is None else f"{100 * rela['of_means']:+.2f}%")
        cells += [_pm(r["train_examples_per_sec"], ",.0f"),
                  f"{r['params']:,}" if isinstance(r["params"], int) else str(r["params"]),
                  _epochs_cell(r["best_epochs"], r["epochs_run"]), _converged_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Test-split figures of each model's runs, mean ± std over seeds ({STD_NOTE}).",
              f"GAUC: {report['gauc_weighting']}; by user" + (" and by request." if has_request else "."),
              (RELA_NOTE + "." if has_rela else ""),
              "train ex/s: training examples per second of the epochs trained in the run's last process "
              "(first epoch included); only comparable between rows of one machine and one sweep.",
              "params: `model.count_params()`, frozen modality vector tables included.",
              CONVERGED_NOTE + ".", ""]
    if has_grid:
        lines += ["## Grid (validation AUC, mean ± std over seeds)", "",
                  "| model | lr | batch | valid AUC | best / epochs | selected |", "|---|---|---|---|---|---|"]
        for r in report["models"]:
            for g in r["grid"]:
                sel = "yes" if (g["learning_rate"], g["batch_size"]) == (r["learning_rate"], r["batch_size"]) else ""
                lines.append(f"| {r['model']} | {lr_tag(g['learning_rate'])} | {g['batch_size']} | "
                             f"{_pm(g['valid_auc'])} | {_epochs_cell(g['best_epochs'], g['epochs_run'])} | {sel} |")
        lines.append("")
    lines += cold_start_tables(report)
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
    stds = np.array([r["test"]["auc"]["std"] or 0.0 for r in rows], dtype=float)  # one seed: no error bar
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
        for i, (r, mu, sd) in enumerate(zip(rows, means, stds)):
            ax_bar.annotate(_pm(r["test"]["auc"]).replace(" ± ", "\n±"), (i, mu + sd), xytext=(0, 4),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8)
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
    fig.suptitle(f"{report.get('dataset', '')}: selected learning rate and batch size per model, seeds "
                 f"{report.get('seeds', '')}", fontsize=10)
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
            batch_sizes: Optional[Sequence[int]] = None, lr_in_name: Optional[bool] = None,
            batch_in_name: Optional[bool] = None, command: Optional[str] = None, train_fn: Optional[Callable] = None,
            log: Callable = print, baseline: str = BASELINE,
            click_buckets: Sequence[int] = DEFAULT_CLICK_BUCKETS) -> dict:
    """Plans, runs (resuming) and reports a sweep; returns the report dict (also written to out_dir).

    base_cfg: a TrainConfig whose epochs, patience, dataset... every run shares (model, seed, learning rate, batch
    size and run_dir are set per run). hparams_of: {model: hyper-parameters}. learning_rates, batch_sizes: the grid
    (default: base_cfg's value only). click_buckets: edges of the cold-start buckets of the report."""
    lrs = [float(x) for x in (learning_rates or [base_cfg.learning_rate])]
    batches = [int(x) for x in (batch_sizes or [base_cfg.batch_size])]
    specs = plan_runs(models, seeds, lrs, batches, out_dir, lr_in_name, batch_in_name)
    hparams_of = hparams_of or {}
    records = run_sweep(specs, base_cfg, hparams_of, train_fn=train_fn, log=log)
    fill_cold_start(records, models, click_buckets, log=log)
    meta = {"command": command, "dataset": base_cfg.dataset, "out_dir": out_dir, "seeds": list(seeds),
            "learning_rates": lrs, "batch_sizes": batches, "epochs": base_cfg.epochs, "patience": base_cfg.patience,
            "click_buckets": list(click_buckets), "hparams": {m: hparams_of.get(m, {}) for m in models},
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = aggregate(records, models, baseline, meta)
    paths = write_report(report, out_dir)
    log(f"[compare] report: {paths['md']}, {paths['json']}, {paths['png']}")
    return report
