"""run.compare (multi-seed sweep, resume, aggregation, cold-start buckets, reports) and run.inspect (per-example model
internals)."""

import dataclasses
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.evaluation import compare as C
from mmctr_tf.evaluation import inspect as I
from mmctr_tf.evaluation import metrics as M
from mmctr_tf.evaluation.evaluate import predict_split, training_clicks
from mmctr_tf.evaluation.metrics import rela_impr
from mmctr_tf.training.trainer import TrainConfig, load_run, train
from run import common
from run import compare as compare_cli
from run import inspect as inspect_cli

MODELS = ["din", "mm_concat"]
SEEDS = [0, 1]
# learning rate 1e-2: at the default 1e-3, 16 steps leave every run at chance (test AUC 0.48-0.51), and RelaImpr
# vs DIN is undefined for a DIN at or below 0.5
FAST = dict(epochs=2, batch_size=256, steps_per_epoch=8, learning_rate=1e-2, verbose=0)
TINY_FLAGS = ["--emb_dim=8", "--dnn_units=16,8", "--att_units=8,4"]


def _cli_argv(small_dataset, out_dir, *extra):
    return (["prog", f"--dataset={small_dataset}", "--models=din,mm_concat", "--seeds=2", "--epochs=2",
             "--batch_size=256", "--steps_per_epoch=8", "--learning_rate=0.01", "--verbose=0",
             f"--out_dir={out_dir}"] + TINY_FLAGS + list(extra))


def _mtimes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            out[os.path.join(d, f)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return out


class _CrashAfterFirstEpoch(keras.callbacks.Callback):
    """Simulates a kill after epoch 1 (BackupAndRestore, earlier in the callback list, has saved it already)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("simulated crash after epoch 1")


# its tests carry @pytest.mark.xdist_group("sweep"): one pytest-xdist worker trains it, once
@pytest.fixture(scope="module")
def sweep(small_dataset, tmp_path_factory):
    """A 2-model x 2-seed sweep (2 epochs of 8 steps) whose first pass loses mm_concat-s1 after its first epoch;
    a second pass with the same settings resumes it."""
    out = str(tmp_path_factory.mktemp("compare") / "report")
    with flagsaver.flagsaver():
        common.parse_for_several_models(_cli_argv(small_dataset, out))
        hparams = {m: common.accepted_model_hparams(m, log=lambda *a: None) for m in MODELS}
    base = TrainConfig(dataset=small_dataset, **FAST)

    def crash_mm_concat_s1(cfg, hp, log):
        crash = [_CrashAfterFirstEpoch()] if (cfg.model, cfg.seed) == ("mm_concat", 1) else []
        return train(cfg, hp, log=log, extra_callbacks=crash)

    logs1, logs2 = [], []
    first = C.compare(base, MODELS, SEEDS, out, hparams, train_fn=crash_mm_concat_s1, command="first",
                      log=logs1.append)
    before = _mtimes(os.path.join(out, "runs"))
    with open(os.path.join(out, "runs", "mm_concat-s1", "epochs.jsonl")) as f:
        crashed_epochs = [json.loads(x) for x in f]
    second = C.compare(base, MODELS, SEEDS, out, hparams, command="second", log=logs2.append)
    return {"out": out, "first": first, "second": second, "before": before, "logs1": logs1, "logs2": logs2,
            "hparams": hparams, "base": base,
            "crashed_epochs": crashed_epochs}


def _run_metrics(out, model):
    ms = []
    for s in SEEDS:
        with open(os.path.join(out, "runs", f"{model}-s{s}", "metrics.json")) as f:
            ms.append(json.load(f))
    return ms


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_report_files_and_json_equal_the_runs_metrics(sweep):
    out = sweep["out"]
    for name in ("report.md", "report.json", "report.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "report.json")) as f:
        rep = json.load(f)
    assert [r["model"] for r in rep["models"]] == MODELS and rep["failed"] == []
    rows = {r["model"]: r for r in rep["models"]}
    for m in MODELS:
        ms = _run_metrics(out, m)
        row = rows[m]
        assert row["n_seeds"] == 2 and row["seeds"] == SEEDS
        for key in ("auc", "logloss", "gauc_user"):
            vals = [x["test"][key] for x in ms]
            assert row["test"][key]["values"] == vals
            assert row["test"][key]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
            assert row["test"][key]["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
        assert row["params"] == ms[0]["params"] and row["best_epochs"] == [x["best_epoch"] for x in ms]
        assert [len(r["val_auc_curve"]) for r in row["runs"]] == [2, 2]
        # converged = the best epoch is not the last one trained (2 epochs each here)
        assert row["converged"] == [x["best_epoch"] < x["epochs_run"] for x in ms]
    din_auc, mm_auc = rows["din"]["test"]["auc"]["mean"], rows["mm_concat"]["test"]["auc"]["mean"]
    assert rows["mm_concat"]["rela_impr"]["of_means"] == pytest.approx((mm_auc - 0.5) / (din_auc - 0.5) - 1)
    # seed-paired: undefined (None) where that seed's DIN is at or below chance
    paired = [(m["test"]["auc"] - 0.5) / (d["test"]["auc"] - 0.5) - 1 if d["test"]["auc"] > 0.5 else None
              for m, d in zip(_run_metrics(out, "mm_concat"), _run_metrics(out, "din"))]
    assert rows["mm_concat"]["rela_impr"]["seed_paired"]["values"] == pytest.approx(paired, abs=1e-12)
    md = open(os.path.join(out, "report.md")).read()
    assert "second" in md and "impression-weighted" in md and "RelaImpr vs DIN" in md
    assert f"{din_auc:.4f} ± {rows['din']['test']['auc']['std']:.4f}" in md
    assert open(os.path.join(out, "report.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_failed_run_is_reported_and_the_sweep_resumes_without_retraining(sweep):
    first, second, out = sweep["first"], sweep["second"], sweep["out"]
    assert [(f["model"], f["seed"]) for f in first["failed"]] == [("mm_concat", 1)]
    assert "simulated crash" in first["failed"][0]["error"]
    assert {r["model"]: r["n_seeds"] for r in first["models"]} == {"din": 2, "mm_concat": 1}
    assert any("1 of 2 seeds" in n for n in first["notes"]) and "FAILED run" in C.markdown_report(first)
    # second pass: the three finished runs were skipped, not a file of theirs changed
    now = _mtimes(os.path.join(out, "runs"))
    crashed = os.path.join(out, "runs", "mm_concat-s1")
    for path, t in sweep["before"].items():
        if not path.startswith(crashed + os.sep):
            assert now[path] == t, path
    logs = "\n".join(sweep["logs2"])
    assert logs.count("finished already, skipped") == 3 and logs.count(": training ->") == 1
    assert "run 4/4 mm_concat seed 1" in logs and "ETA" in logs and "elapsed" in logs
    # the crashed run resumed from its backup: epoch 1 (logged before the crash) was not trained again
    assert [r["epoch"] for r in sweep["crashed_epochs"]] == [1]
    with open(os.path.join(crashed, "epochs.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == sweep["crashed_epochs"][0]
    with open(os.path.join(crashed, "metrics.json")) as f:
        assert json.load(f)["epochs_run"] == 2
    assert second["failed"] == [] and {r["model"]: r["n_seeds"] for r in second["models"]} == {"din": 2,
                                                                                              "mm_concat": 2}


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_mismatched_run_directory_is_refused(sweep):
    base = dataclasses.replace(sweep["base"], epochs=3)
    with pytest.raises(ValueError, match=r"din-s0.*config\.json.*epochs=2"):
        C.compare(base, MODELS, SEEDS, sweep["out"], sweep["hparams"], log=lambda *a: None)
    hp = {**sweep["hparams"], "din": {**sweep["hparams"]["din"], "emb_dim": 4}}
    with pytest.raises(ValueError, match="hyper-parameters"):
        C.compare(sweep["base"], MODELS, SEEDS, sweep["out"], hp, log=lambda *a: None)


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_cli_rebuilds_the_report_from_finished_runs(sweep, small_dataset, monkeypatch, capsys):
    argv = _cli_argv(small_dataset, sweep["out"])
    monkeypatch.setattr(sys, "argv", ["/x/run/compare.py"] + argv[1:])
    with flagsaver.flagsaver():
        common.parse_for_several_models(argv)
        assert compare_cli.main([]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished already, skipped") == 4 and "| din | 0.01 | 256 | 2 |" in printed
    with open(os.path.join(sweep["out"], "report.json")) as f:
        rep = json.load(f)
    assert rep["command"].startswith("python -m run.compare --dataset=") and "--seeds=2" in rep["command"]


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_cli_rescores_the_cold_start_buckets_for_other_edges(sweep, small_dataset, train_clicks, sweep_predictions,
                                                             monkeypatch, capsys):
    """metrics.json has the default buckets; other --click_buckets re-score the selected runs' best checkpoints."""
    data = Dataset(small_dataset)
    test_clicks = train_clicks[np.concatenate([f["item_id"].numpy() for f, _ in data.tf_dataset("test", 4096)])]
    cut = max(1, int(np.median(test_clicks)))
    argv = _cli_argv(small_dataset, sweep["out"], f"--click_buckets=0,{cut}")
    monkeypatch.setattr(sys, "argv", ["/x/run/compare.py"] + argv[1:])
    with flagsaver.flagsaver():
        common.parse_for_several_models(argv)
        assert compare_cli.main([]) == 0
    assert f"| model | 0-{cut - 1} clicks | {cut}+ clicks |" in capsys.readouterr().out
    with open(os.path.join(sweep["out"], "report.json")) as f:
        rep = json.load(f)
    assert rep["click_buckets"] == [0, cut]
    buckets = [test_clicks < cut, test_clicks >= cut]
    for row in rep["models"]:
        assert [b["examples"] for b in row["cold_start"]["buckets"]] == [int(b.sum()) for b in buckets]
        runs = [os.path.join(sweep["out"], "runs", f"{row['model']}-s{s}") for s in SEEDS]
        preds = [sweep_predictions[r] for r in runs]
        for b, rows in zip(row["cold_start"]["buckets"], buckets):  # the mean over seeds of each re-scored run
            want = np.mean([M.auc(p["label"][rows], p["prob"][rows]) for p in preds])
            assert b["auc"]["mean"] == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------------------- cold start
@pytest.fixture(scope="module")
def sweep_predictions(sweep, small_dataset):
    """{run directory: `predict_split` of its best checkpoint on the test split} for every run of the sweep. A model's
    later seeds load their weights into the first seed's model (same configuration), whose traced prediction
    function `predict_split` keeps."""
    data = Dataset(small_dataset)
    out = {}
    for m in MODELS:
        model = None
        for s in SEEDS:
            run = os.path.join(sweep["out"], "runs", f"{m}-s{s}")
            if model is None:
                model = load_run(run)[0]
            else:
                model.load_weights(os.path.join(run, "best.weights.h5"))
            out[run] = predict_split(model, data, "test")
    return out


@pytest.fixture(scope="module")
def train_clicks(small_dataset):
    """Clicks per item id counted independently of the project's readers: every training record parsed as a
    tf.train.Example proto."""
    data = Dataset(small_dataset)
    counts = np.zeros(data.schema.vocab_of("item_id"), np.int64)
    for raw in tf.data.TFRecordDataset(data.files("train"), compression_type=data.compression or ""):
        f = tf.train.Example.FromString(raw.numpy()).features.feature
        if f["label"].float_list.value[0] > 0.5:
            counts[f["item_id"].int64_list.value[0]] += 1
    return counts


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_training_clicks_and_each_runs_buckets_against_independent_computations(sweep, small_dataset, train_clicks,
                                                                                 sweep_predictions):
    data = Dataset(small_dataset)
    np.testing.assert_array_equal(training_clicks(data), train_clicks)
    assert train_clicks.sum() == data.manifest["splits"]["train"]["positives"]  # the writer's own count
    report = sweep["second"]  # the sweep's own report (report.json is rewritten by the re-scoring test)
    for row in report["models"]:
        per_seed = []
        for s in SEEDS:
            run_dir = os.path.join(sweep["out"], "runs", f"{row['model']}-s{s}")
            with open(os.path.join(run_dir, "metrics.json")) as f:
                cold = json.load(f)["test"]["cold_start"]  # written by the trainer
            p = sweep_predictions[run_dir]
            clicks = train_clicks[p["item_id"]]
            assert cold["edges"] == [0, 1, 5, 20]
            aucs = []
            for b, lo, hi in zip(cold["buckets"], [0, 1, 5, 20], [1, 5, 20, np.inf]):
                rows = (clicks >= lo) & (clicks < hi)
                assert b["examples"] == rows.sum() and b["positives"] == p["label"][rows].sum()
                want = M.auc(p["label"][rows], p["prob"][rows])
                assert (np.isnan(b["auc"]) and np.isnan(want)) or b["auc"] == pytest.approx(want, abs=1e-6)
                aucs.append(want)
            assert sum(b["examples"] for b in cold["buckets"]) == data.examples("test")
            per_seed.append(aucs)
        # the report's per-bucket figure is the mean over seeds of the runs' figures
        for k, b in enumerate(row["cold_start"]["buckets"]):
            vals = [a[k] for a in per_seed if np.isfinite(a[k])]
            assert b["auc"]["n"] == len(vals)
            if vals:
                assert b["auc"]["mean"] == pytest.approx(np.mean(vals), abs=1e-6)
    assert sum(np.isfinite(b["auc"]["mean"] or np.nan) for b in report["models"][0]["cold_start"]["buckets"]) >= 2


def test_cli_flags_keep_dataset_config_but_not_one_models_config():
    with flagsaver.flagsaver():
        common.parse_for_several_models(["prog", "--dataset=synthetic", "--epochs=2", "--models=din,dmae",
                                         "--emb_dim=4"])
        assert common.FLAGS.epochs == 2 and common.FLAGS.patience == 1  # configs/datasets/synthetic.cfg applies
        assert not common.FLAGS["att_units"].present  # configs/models/din.cfg is not applied to every model
        hp = common.accepted_model_hparams("dmae", log=lambda *a: None)
        assert hp["emb_dim"] == 4 and hp["lambda_dec"] == 0.5  # dmae.cfg, then the explicit flag
        notes = []
        assert "lambda_dec" not in common.accepted_model_hparams("din", log=notes.append)
        common.parse_for_several_models(["prog", "--lambda_dec=0.3"])
        assert "lambda_dec" not in common.accepted_model_hparams("din", log=notes.append)
        assert notes and "--lambda_dec" in notes[-1]


# ------------------------------------------------------------------------------------------- hand-made metrics
def _rec(model, seed, test_auc, valid_auc=0.7, lr=1e-3, batch=1024, **extra):
    metrics = {"test": {"auc": test_auc, "logloss": 0.5 + seed / 100, "gauc_user": test_auc - 0.01},
               "valid": {"auc": valid_auc, "logloss": 0.5}, "params": 100, "best_epoch": 1 + seed,
               "epochs_run": 3, "train_examples_per_sec": 1000.0 + seed, **extra}
    return {"model": model, "seed": seed, "learning_rate": lr, "batch_size": batch,
            "run_dir": f"/r/{model}-{lr}-{batch}-s{seed}", "status": "ok", "metrics": metrics,
            "epochs": [{"epoch": 1, "val_auc": valid_auc}]}


def test_aggregation_maths():
    recs = [_rec("din", s, a) for s, a in zip([0, 1, 2], [0.70, 0.72, 0.74])]
    recs += [_rec("dmae", s, a) for s, a in zip([0, 1, 2], [0.75, 0.77, 0.76])]
    rep = C.aggregate(recs, ["din", "dmae"])
    din, dmae = rep["models"]
    assert din["test"]["auc"]["mean"] == pytest.approx(0.72) and din["test"]["auc"]["std"] == pytest.approx(0.02)
    assert dmae["test"]["auc"]["mean"] == pytest.approx(0.76) and dmae["test"]["auc"]["std"] == pytest.approx(0.01)
    assert dmae["rela_impr"]["of_means"] == pytest.approx(0.26 / 0.22 - 1)
    paired = [0.25 / 0.20 - 1, 0.27 / 0.22 - 1, 0.26 / 0.24 - 1]
    assert dmae["rela_impr"]["seed_paired"]["values"] == pytest.approx(paired)
    assert dmae["rela_impr"]["seed_paired"]["mean"] == pytest.approx(np.mean(paired))
    assert dmae["train_examples_per_sec"]["mean"] == pytest.approx(1001.0)
    assert dmae["test"]["gauc_request"]["n"] == 0 and dmae["best_epochs"] == [1, 2, 3]
    assert C.summary([0.5])["std"] is None and C.summary([None])["mean"] is None
    assert rela_impr(0.76, 0.72) == pytest.approx(dmae["rela_impr"]["of_means"])
    # seed 2's best epoch (3) is its last of 3: not converged, in the table and the notes
    assert dmae["converged"] == [True, True, False] and dmae["runs"][2]["converged"] is False
    assert any("dmae: NOT CONVERGED for seed(s) 2" in n for n in rep["notes"])
    md = C.markdown_report(rep)
    assert "| dmae | 0.001 | 1024 | 3 | 0.7600 ± 0.0100 |" in md and f"{100 * (0.26 / 0.22 - 1):+.2f}%" in md
    assert "| 1/3, 2/3, 3/3 | **no**: seed 2 |" in md
    assert "GAUC (request)" not in md and "Cold start" not in md  # hand-made runs have no buckets

    one = C.markdown_report(C.aggregate([_rec("din", 0, 0.7, best_epoch=1)], ["din"]))
    assert "| din | 0.001 | 1024 | 1 | 0.7000 ± – | 0.5000 ± – |" in one and "± 0.0000" not in one
    assert "| 1/3 | yes |" in one

    weak = C.aggregate([_rec("din", 0, 0.49), _rec("din", 1, 0.47), _rec("dmae", 0, 0.6), _rec("dmae", 1, 0.52)],
                       ["din", "dmae"])
    assert weak["models"][1]["rela_impr"]["of_means"] is None  # AUC_DIN <= 0.5: RelaImpr undefined, not -100%
    assert any("not meaningful" in n for n in weak["notes"])
    assert "| dmae | 0.001 | 1024 | 2 |" in C.markdown_report(weak)

    without_din = C.aggregate([r for r in recs if r["model"] == "dmae"], ["dmae"])
    assert without_din["models"][0]["rela_impr"] is None and without_din["baseline"] is None
    assert any("RelaImpr omitted" in n and "not among --models" in n for n in without_din["notes"])
    assert "RelaImpr" not in C.markdown_report(without_din).split("## Notes")[0].split("\n|")[1]


def test_grid_of_learning_rates_and_batch_sizes_selects_on_validation_not_test(tmp_path):
    # (1e-2, 256): the best validation and the worst test -> it must be selected; the others are better on test
    valid = {(1e-3, 256): [0.70, 0.72], (1e-3, 1024): [0.71, 0.71], (1e-2, 256): [0.75, 0.73], (1e-2, 1024): [0.6, 0.8]}
    recs = [_rec("din", s, 0.60 if point == (1e-2, 256) else 0.80, valid_auc=v, lr=point[0], batch=point[1])
            for point, vs in valid.items() for s, v in zip([0, 1], vs)]
    rep = C.aggregate(recs, ["din"])
    row = rep["models"][0]
    assert (row["learning_rate"], row["batch_size"]) == (1e-2, 256)
    assert row["test"]["auc"]["mean"] == pytest.approx(0.60) and row["seeds"] == [0, 1]
    grid = {(g["learning_rate"], g["batch_size"]): g["valid_auc"]["mean"] for g in row["grid"]}
    assert grid == pytest.approx({k: np.mean(v) for k, v in valid.items()})
    md = C.markdown_report(rep)
    assert "| din | 0.01 | 256 | 2 | 0.6000 ± 0.0000 |" in md
    mean, std = np.mean([0.75, 0.73]), np.std([0.75, 0.73], ddof=1)
    assert "## Grid" in md and f"| din | 0.01 | 256 | {mean:.4f} ± {std:.4f} | 1/3, 2/3 | yes |" in md
    assert "| din | 0.001 | 1024 | 0.7100 ± 0.0000 | 1/3, 2/3 |  |" in md
    paths = C.write_report(rep, str(tmp_path))
    assert json.load(open(paths["json"]))["models"][0]["grid"][0]["valid_auc"]["values"] == [0.70, 0.72]
    specs = C.plan_runs(["din"], [0, 1], [1e-3, 1e-2], [256, 1024], "out")
    assert [os.path.basename(s.run_dir) for s in specs[:3]] == ["din-lr0.001-bs256-s0", "din-lr0.001-bs256-s1",
                                                                "din-lr0.001-bs1024-s0"]
    assert [(s.learning_rate, s.batch_size) for s in specs[-2:]] == [(1e-2, 1024)] * 2
    assert [os.path.basename(s.run_dir) for s in C.plan_runs(["din"], [0], [1e-3, 1e-2], [512], "out")] == [
        "din-lr0.001-s0", "din-lr0.01-s0"]
    assert os.path.basename(C.plan_runs(["din"], [3], [1e-3], [1024], "out")[0].run_dir) == "din-s3"
    with pytest.raises(ValueError, match="--batch_sizes lists a value twice"):
        C.plan_runs(["din"], [0], [1e-3], [256, 256], "out")


# ------------------------------------------------------------------------------------------- inspect
def _built(small_dataset, model, **hparams):
    """An untrained model on the small dataset (its tables loaded) and test example 5: enough to check what
    inspect reads, since P (eq. 10) depends on the data only and the re-computed forward pass on nothing trained."""
    from mmctr_tf.data.datasets import Dataset
    from mmctr_tf.models import build_model

    data = Dataset(small_dataset)
    m = build_model(model, data.schema, data.tables, **{"emb_dim": 8, "dnn_units": [16, 8], "att_units": [8, 4],
                                                         **hparams})
    return m, I.load_example(data, "test", 5)


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_inspect_din_family_attention_and_cli(sweep, tmp_path, capsys):
    run_dir = os.path.join(sweep["out"], "runs", "din-s0")
    din = I.inspect_run(run_dir, 3, "test", str(tmp_path / "din.png"))
    assert open(din["png"], "rb").read(4) == b"\x89PNG"
    assert din["label"] in (0.0, 1.0) and 0.0 < din["prob"][0] < 1.0
    w, attended, normalised = din["attention"]["id (backbone attention)"]
    assert not normalised  # DIN's default: raw scores
    n = int(din["hist_len"][0])
    assert w.shape == (1, 20) and 0 < n and np.all(w[0, n:] == 0) and np.any(w[0, :n] != 0)
    assert attended[0].tolist() == [True] * n + [False] * (20 - n)
    assert "predicted probability" in din["text"] and "hist_item_id" in din["text"]
    with pytest.raises(ValueError, match="--example=99999 is out of range"):
        I.inspect_run(run_dir, 99999, "test", str(tmp_path / "x.png"))
    mm_dir = os.path.join(sweep["out"], "runs", "mm_concat-s0")
    with flagsaver.flagsaver():
        common.FLAGS(["prog", f"--run_dir={mm_dir}", "--example=3", "--split=valid", f"--out={tmp_path / 'mm.png'}"])
        assert inspect_cli.main([]) == 0
        common.FLAGS(["prog", f"--run_dir={tmp_path}", "--example=3"])
        assert inspect_cli.main([]) == 2  # not a run directory: a clear error, no traceback
    printed = capsys.readouterr()
    assert "model mm_concat" in printed.out and "predicted probability" in printed.out
    assert "config.json" in printed.err and "not a run directory" in printed.err
    assert open(tmp_path / "mm.png", "rb").read(4) == b"\x89PNG"


@pytest.mark.slow
def test_inspect_dmae_distribution_matches_eq10(small_dataset, tmp_path):
    model, (inputs, label) = _built(small_dataset, "dmae", l=4, n=5, mieu_dim=8, window=4, decoder_units=[16])
    info = I.explain(model, inputs)
    I.render(info, str(tmp_path / "dmae.png"), "dmae")
    assert os.path.getsize(tmp_path / "dmae.png") > 0
    n = int(info["hist_len"][0])
    assert n > 0 and set(info["dmae"]["distribution"]) == set(model.modalities)
    for m, (p, q) in info["dmae"]["distribution"].items():
        r = info["dmae"]["similarity"][m][0, :n]
        counted = ~np.isnan(r)
        expected = np.zeros([4, 5])
        for j in np.flatnonzero(counted):  # eq. (10), recomputed from r
            expected[j * 4 // n, min(int(np.floor(r[j] * 5)), 4)] += 1.0 / counted.sum()
        assert p.shape == (1, 4, 5) and p[0].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(p[0], expected, atol=1e-6)
        segment_share = [np.sum(counted & (np.arange(n) * 4 // n == i)) / counted.sum() for i in range(4)]
        np.testing.assert_allclose(p[0].sum(axis=1), segment_share, atol=1e-6)  # row i = share of segment i
        assert q.shape == (1, 4, 5)


@pytest.mark.slow
def test_inspect_diff_msin_gates(small_dataset, tmp_path):
    model, (inputs, _) = _built(small_dataset, "diff_msin", expert_units=16, num_heads=2, diffusion_steps=2)
    info = I.explain(model, inputs)
    dm = info["diff_msin"]
    np.testing.assert_allclose(dm["prob"], info["prob"], atol=1e-6)  # parts come from the model's own pass
    assert set(dm["mfe_gate"]) == {"id"}  # only E^id of eq. (7) is read afterwards (eq. 17's query)
    names = [f"E^{m}" for m in model.modalities] + ["E^sh", "E^syn"]
    assert list(dm["fdaf_attention"]) == names
    # FDAF gates, eq. (14): sigmoid(W E_target^id + b), one d_e-wide gate per auxiliary vector, in numpy
    target = model.features(inputs, training=False)["target"].numpy()
    gate = 1.0 / (1.0 + np.exp(-(target @ model.fdaf.gate.kernel.numpy() + model.fdaf.gate.bias.numpy())))
    for i, n in enumerate(names):
        np.testing.assert_allclose(dm["fdaf_gate"][n], gate[:, i * 16:(i + 1) * 16], rtol=1e-5, atol=1e-6)
    assert {"text (target attention)", "image (target attention)"} <= set(info["attention"])
    I.render(info, str(tmp_path / "dm.png"), "diff_msin")
    assert os.path.getsize(tmp_path / "dm.png") > 0
    ablated, _ = _built(small_dataset, "diff_msin", expert_units=16, num_heads=2, diffusion_steps=2, use_mfe=False,
                        use_src=False, use_fdaf=False)  # "w/o all": no gates to show
    assert set(I.explain(ablated, inputs)["diff_msin"]) == {"prob"}


def test_read_run_marks_a_run_whose_final_evaluation_failed(tmp_path):
    """A metrics.json that records a split the final evaluation could not read makes the run 'failed', naming the
    split and the reason; a complete one is 'ok'; none is 'missing'."""
    for name, metrics in (("ok", {"valid": {"auc": 0.7}, "test": {"auc": 0.6}}),
                          ("bad", {"valid": {"auc": 0.7}, "test": {"error": "test data is unreadable: x: bad"}})):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "metrics.json", "w") as f:
            json.dump(metrics, f)
    status = {n: C.read_run(C.RunSpec("din", 0, 1e-3, 1024, str(tmp_path / n))) for n in ("ok", "bad", "none")}
    assert [status[n]["status"] for n in ("ok", "bad", "none")] == ["ok", "failed", "missing"]
    assert status["bad"]["error"] == "test: test data is unreadable: x: bad" and "error" not in status["ok"]


def test_a_run_stopped_early_is_reused_under_a_higher_epoch_cap(tmp_path):
    """A finished run made with --epochs=4 and --patience=1: reused under another cap when early stopping ended it
    at or before that cap (best epoch 2, stopped after epoch 3), refused when it ran into its cap (best epoch 4 of 4:
    it would train on) or when the new cap would cut it."""
    base = TrainConfig(model="lr", dataset="d", epochs=4, patience=1, batch_size=1024)

    def finished(name, best, run):
        cfg = dataclasses.replace(base, run_dir=str(tmp_path / name))
        os.makedirs(cfg.run_dir)
        with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
            json.dump({"train": dataclasses.asdict(cfg), "hparams": {}}, f)
        with open(os.path.join(cfg.run_dir, "metrics.json"), "w") as f:
            json.dump({"best_epoch": best, "epochs_run": run}, f)
        return cfg

    stopped, capped = finished("stopped", 2, 3), finished("capped", 4, 4)
    for epochs in (3, 4, 30):
        C.check_run_dir(dataclasses.replace(stopped, epochs=epochs), {})
    with pytest.raises(ValueError, match=r"epochs=4, this sweep asks for epochs=2 and was not stopped early"):
        C.check_run_dir(dataclasses.replace(stopped, epochs=2), {})
    C.check_run_dir(capped, {})
    with pytest.raises(ValueError, match=r"capped.*epochs=4, this sweep asks for epochs=30 and was not stopped"):
        C.check_run_dir(dataclasses.replace(capped, epochs=30), {})
    with pytest.raises(ValueError, match="patience=1, this sweep asks for patience=2"):
        C.check_run_dir(dataclasses.replace(stopped, epochs=30, patience=2), {})
