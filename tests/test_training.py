"""Trainer, resume, distribution, evaluation and TF Serving export, end to end on a small synthetic dataset."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from conftest import REPO
from test_dice import check_stored_dice_statistics
from test_metrics import brute_auc

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.evaluation.metrics import auc
from mmctr_tf.export import saved_model as sm
from mmctr_tf.models import dummy_batch
from mmctr_tf.training import callbacks as cb
from mmctr_tf.training.trainer import TrainConfig, load_run, train

SMALL = {"emb_dim": 8, "dnn_units": [32, 16], "att_units": [16, 8]}


def _cfg(small_dataset, run_dir, **kw):
    base = dict(model="din", dataset=small_dataset, run_dir=str(run_dir), epochs=3, batch_size=256, verbose=0)
    base.update(kw)
    return TrainConfig(**base)


def popularity_auc(data, split):
    """AUC of the item's smoothed training CTR: the baseline any sequence model must beat."""
    ys, items = [], []
    for name in ("train", split):
        y, it = [], []
        for feats, label in data.tf_dataset(name, 4096):
            y.append(label.numpy())
            it.append(feats["item_id"].numpy())
        ys.append(np.concatenate(y))
        items.append(np.concatenate(it))
    V = data.schema.vocab["item_id"]
    clicks = np.bincount(items[0], weights=ys[0], minlength=V)
    imps = np.bincount(items[0], minlength=V)
    prior = ys[0].mean()
    return auc(ys[1], ((clicks + 10 * prior) / (imps + 10))[items[1]])


# its tests carry @pytest.mark.xdist_group("din_run"): one pytest-xdist worker trains it, once
@pytest.fixture(scope="module")
def din_run(small_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "din"
    result = train(_cfg(small_dataset, run_dir, learning_rate=1e-2), SMALL, log=lambda *a: None)
    return run_dir, result


@pytest.mark.slow
@pytest.mark.xdist_group("din_run")
def test_din_beats_popularity_and_stays_below_bayes(din_run, small_dataset):
    run_dir, result = din_run
    data = Dataset(small_dataset)
    bayes = data.manifest["splits"]["test"]["bayes_auc"]
    pop = popularity_auc(data, "test")
    # measured (seed 0): DIN 0.639, popularity 0.601, Bayes 0.790 (python /tmp/din_small2.py 1e-2 3)
    assert pop + 0.015 < result["test"]["auc"] < bayes, (pop, result["test"]["auc"], bayes)
    assert np.isfinite(result["test"]["logloss"]) and "gauc_user" in result["test"]


@pytest.mark.slow
@pytest.mark.xdist_group("din_run")
def test_run_dir_contents_and_metrics_contract(din_run, small_dataset):
    run_dir, result = din_run
    for name in ("config.json", "epochs.jsonl", "best.weights.h5", "best.json", "metrics.json", "tensorboard"):
        assert os.path.exists(run_dir / name), name
    with open(run_dir / "metrics.json") as f:
        m = json.load(f)
    assert {"model", "dataset", "test", "best_epoch"} <= set(m)
    assert {"auc", "logloss", "gauc_user"} <= set(m["test"])
    epochs = cb.read_epochs(str(run_dir))
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    best = max(epochs, key=lambda e: e["val_auc"])
    assert m["best_epoch"] == best["epoch"]  # selected on validation, never test
    # the epoch kept is the epoch validated, scored exactly: the best checkpoint's AUC (pairwise count) and logloss
    # (numpy) on the whole validation split equal that epoch's val_auc and val_logloss, best.json and metrics.json
    model, _ = load_run(str(run_dir))
    labels, probs = [], []
    for feats, label in Dataset(small_dataset).tf_dataset("valid", 512):
        probs.append(model(feats, training=False).numpy().astype(np.float64))
        labels.append(label.numpy())
    y, p = np.concatenate(labels), np.concatenate(probs)
    pairwise = brute_auc(y, p)
    q = np.clip(p, 1e-7, 1 - 1e-7)  # probabilities clipped as metrics.logloss documents
    logloss = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    with open(run_dir / cb.BEST_STATE) as f:
        kept = json.load(f)
    for value in (best["val_auc"], kept["best"], m["best_val_auc"], m["valid"]["auc"]):
        assert value == pytest.approx(pairwise, abs=1e-6)
    for value in (best["val_logloss"], best["val_loss"], m["valid"]["logloss"]):
        assert value == pytest.approx(logloss, abs=1e-6)
    # finished runs are not retrained
    again = train(TrainConfig(model="din", dataset=m["dataset"], run_dir=str(run_dir)), SMALL, log=lambda *a: None)
    assert again == m


class _Kill(keras.callbacks.Callback):
    """Simulates a crash right after epoch `at` was backed up."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt("simulated kill")


class _SeenEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch + 1)


@pytest.mark.slow
def test_killed_run_resumes_from_last_epoch(small_dataset, tmp_path):
    cfg = _cfg(small_dataset, tmp_path / "run", epochs=3, steps_per_epoch=10)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, SMALL, log=lambda *a: None, extra_callbacks=[_Kill(2)])
    assert not os.path.exists(tmp_path / "run" / "metrics.json")
    seen = _SeenEpochs()
    result = train(cfg, SMALL, log=lambda *a: None, extra_callbacks=[seen])
    assert seen.seen == [3]  # epochs 1-2 were restored, not re-run
    assert [e["epoch"] for e in cb.read_epochs(str(tmp_path / "run"))] == [1, 2, 3]
    assert result["epochs_run"] == 3
    check_stored_dice_statistics(tmp_path / "run", small_dataset)


@pytest.mark.slow
def test_resume_refuses_a_different_model(small_dataset, tmp_path):
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):  # LR: the cheapest model to trace; the model does not matter here
        train(_cfg(small_dataset, run, model="lr", epochs=2, steps_per_epoch=2), {}, log=lambda *a: None,
              extra_callbacks=[_Kill(1)])
    with pytest.raises(ValueError, match="belongs to model='lr'"):
        train(_cfg(small_dataset, run, epochs=2, steps_per_epoch=2), SMALL, log=lambda *a: None)


@pytest.mark.slow
def test_two_replica_mirrored_strategy_on_cpu(small_dataset, tmp_path):
    # XLA cannot compile a step that reads variables of two logical CPU devices (TF "known issue": variable on a
    # different device), so the two-replica CPU run is not jit-compiled; on GPUs each replica compiles its own.
    result = train(_cfg(small_dataset, tmp_path / "mirrored", epochs=1, steps_per_epoch=5, cpu_replicas=2,
                        batch_size=64), SMALL, log=lambda *a: None)
    assert result["replicas"] == 2 and result["global_batch"] == 128
    assert np.isfinite(result["test"]["auc"])
    check_stored_dice_statistics(tmp_path / "mirrored", small_dataset)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mm_concat", "simtier", "dmae", "diff_msin"])
def test_multimodal_models_train_under_mixed_float16(small_dataset, name):
    """Keras' mixed_float16 policy (`run.bench --mixed_precision` on a GPU; float16 matmuls also run on CPU):
    the float32 frozen tables, cosines and auxiliary losses meet float16 activations. Each model used to fail
    here (dtype mismatches, and Diff-MSIN's cosines gave NaN: eps = 1e-12 is 0 in float16)."""
    from mmctr_tf.models import MODELS, accepted_hparams, build_model

    small = dict(emb_dim=4, dnn_units=[16, 8], att_units=[8, 4], simtier_dim=2, expert_units=16, num_heads=2,
                 diffusion_steps=2, tokens_per_vector=4)
    data = Dataset(small_dataset)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(name, data.schema, data.tables,
                            **{k: v for k, v in small.items() if k in accepted_hparams(MODELS[name])})
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", run_eagerly=True)
        hist = model.fit(data.tf_dataset("train", 64, shuffle=True, seed=0, repeat=True), steps_per_epoch=3,
                         epochs=1, verbose=0)
        feats, _ = next(iter(data.tf_dataset("test", 32)))
        p = np.asarray(model(feats, training=False), np.float32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(hist.history["loss"][-1])
    assert p.shape == (32,) and np.all(np.isfinite(p))


def test_nonfinite_guard_names_the_step():
    guard = cb.NonFiniteGuard()
    guard.on_epoch_begin(4)
    guard.on_train_batch_end(6, {"loss": 0.3})
    with pytest.raises(cb.NonFiniteLossError, match="epoch 5, step 8"):
        guard.on_train_batch_end(7, {"loss": float("nan")})


@pytest.mark.slow  # 5.1 s alone (-n 0) on the 2-core machine
def test_predict_split_traces_the_model_once_for_every_split(small_dataset):
    """Scoring valid then test, each with a partial last batch, traces one inference function; its probabilities are
    the Keras model's own on the same examples."""
    from mmctr_tf.evaluation.evaluate import inference_function, predict_split
    from mmctr_tf.models import build_model

    data = Dataset(small_dataset)
    keras.utils.set_random_seed(0)
    model = build_model("din", data.schema, **SMALL)
    out = {split: predict_split(model, data, split, batch_size=300) for split in ("valid", "test")}
    spec = data.tf_dataset("valid", 300).element_spec[0]
    assert inference_function(model, spec).experimental_get_tracing_count() == 1
    for split, got in out.items():
        feats, label = next(iter(data.tf_dataset(split, 4096)))
        assert len(got["prob"]) == len(label) and len(label) % 300  # the last batch of 300 was partial
        np.testing.assert_allclose(got["prob"], model(feats, training=False).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["label"], label.numpy())


@pytest.mark.slow
@pytest.mark.xdist_group("din_run")
def test_export_round_trip_both_signatures(din_run, small_dataset, tmp_path):
    run_dir, _ = din_run
    model, _ = load_run(str(run_dir))
    data = Dataset(small_dataset)
    feats, _ = next(iter(data.tf_dataset("test", 64)))
    batch = {k: v.numpy() for k, v in feats.items()}
    path = sm.export_model(model, str(tmp_path / "export"), verify_batch=batch, log=lambda *a: None)
    assert path.endswith(os.sep + "1")
    loaded = tf.saved_model.load(path)
    expected = np.asarray(model(batch, training=False))
    named = loaded.signatures["serving_default"](**{k: tf.constant(batch[k]) for k in data.schema.model_inputs})
    # graph vs eager execution differ only by float rounding (fused kernels); the two signatures agree exactly
    np.testing.assert_allclose(named["probability"].numpy(), expected, atol=1e-6, rtol=0)
    ex = loaded.signatures["serving_tf_example"](examples=tf.constant(sm.serialize_examples(batch, data.schema)))
    np.testing.assert_array_equal(ex["probability"].numpy(), named["probability"].numpy())
    # batch of 1, empty history, OOV ids, sequences longer than L
    one = dummy_batch(data.schema, batch=1, hist_len=0)
    one["item_id"][:] = 10**9
    assert np.isfinite(loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in one.items()})
                       ["probability"].numpy()).all()
    L = data.schema.seq_len
    long = {k: v[:4] for k, v in batch.items()}
    for f in data.schema.hist_features:
        long[f] = np.concatenate([np.ones((4, 7), np.int64), long[f]], axis=1)  # 7 older behaviours in front
    long["hist_len"] = long["hist_len"] + 7
    trunc = {k: v[:4] for k, v in batch.items()}
    for f in data.schema.hist_features:
        rows = []
        for i in range(4):
            seq = np.concatenate([np.ones(7, np.int64), batch[f][i][: batch["hist_len"][i]]])[-L:]
            rows.append(np.pad(seq, (0, L - len(seq))))
        trunc[f] = np.array(rows)
    trunc["hist_len"] = np.minimum(batch["hist_len"][:4] + 7, L)
    got = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in long.items()})["probability"]
    np.testing.assert_allclose(got.numpy(), np.asarray(model(trunc, training=False)), atol=1e-6)
    # the README's `saved_model_cli show --all` (this interpreter's copy, not whichever one PATH finds) lists both
    # signatures; serving_default takes exactly the schema's inputs, as int64
    out = subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all", "--dir",
                          path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    sigs = dict(re.findall(r"signature_def\['(\w+)'\]:\n(.*?)Method name", out.stdout, re.S))
    assert {"serving_default", "serving_tf_example"} <= set(sigs)
    inputs = re.findall(r"inputs\['(\w+)'\] tensor_info:\s+dtype: (\w+)", sigs["serving_default"])
    assert sorted(inputs) == sorted((k, "DT_INT64") for k in data.schema.model_inputs)


@pytest.mark.slow
@pytest.mark.xdist_group("din_run")
def test_interrupted_export_keeps_previous_version(din_run, tmp_path, monkeypatch):
    run_dir, _ = din_run
    model, _ = load_run(str(run_dir))
    base = str(tmp_path / "export")
    first = sm.export_model(model, base, log=lambda *a: None)

    def boom(*a, **k):
        raise RuntimeError("killed during verification")

    monkeypatch.setattr(sm, "verify_export", boom)
    with pytest.raises(RuntimeError):
        sm.export_model(model, base, log=lambda *a: None)
    assert sorted(os.listdir(base)) == ["1"] and os.path.exists(os.path.join(first, "saved_model.pb"))


@pytest.mark.slow
def test_cli_make_data_train_evaluate_export(tmp_path, capsys):
    """The README's commands, on a tiny dataset, as subprocesses (one TF import each); the baseline run and the
    refusal that needs TensorFlow run in this process (`python -m run.train` as it parses its flags). Flags refused
    before TensorFlow is imported: tests/test_reliability.py."""
    from test_reliability import _flags, _main_out

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    data = str(tmp_path / "tiny")
    run = str(tmp_path / "run")

    def sh(*args):
        p = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    out = sh("run.make_data", "--dataset=synthetic", f"--out_dir={data}", "--num_users=150", "--num_items=100",
             "--impressions_per_user=8", "--seq_len=8", "--dim=8")
    assert "bayes AUC" in out and "train" in out
    base = str(tmp_path / "base")
    train_argv = ["--model=din", f"--dataset={data}", "--epochs=1", "--batch_size=64", "--emb_dim=4", "--verbose=0"]
    sh("run.train", *train_argv, f"--run_dir={run}", "--seed=0")
    with flagsaver.flagsaver():
        train(*_flags([*train_argv, f"--run_dir={base}", "--seed=1"]), log=lambda *a: None)
    valid_auc = {}
    for run_dir in (run, base):
        with open(os.path.join(run_dir, "metrics.json")) as f:
            m = json.load(f)
        assert m["model"] == "din"
        valid_auc[run_dir] = m["valid"]["auc"]
    assert valid_auc[run] != valid_auc[base]
    out = sh("run.evaluate", f"--run_dir={run}", "--split=valid", f"--baseline_run_dir={base}")
    res = json.loads(out.strip().splitlines()[-1])
    assert "| din | valid |" in out and res["auc"] == pytest.approx(valid_auc[run], abs=1e-6)
    want = (valid_auc[run] - 0.5) / (valid_auc[base] - 0.5) - 1  # from the trainer's own evaluation of both runs
    assert res["baseline_auc"] == pytest.approx(valid_auc[base], abs=1e-6)
    assert res["rela_impr"] == pytest.approx(want, abs=1e-5)
    out = sh("run.export", f"--run_dir={run}", f"--export_dir={tmp_path / 'serving'}")
    assert os.path.exists(tmp_path / "serving" / "1" / "saved_model.pb")
    rc, _, err = _main_out(["--model=din", "--dataset=electro", f"--data_dir={tmp_path}"], capsys)
    assert rc != 0 and "run.make_data --dataset=electro" in err
