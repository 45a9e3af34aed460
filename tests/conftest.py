"""Shared fixtures. TensorFlow is imported once per pytest process; the CPU is split into two logical devices
before anything initialises TensorFlow, so MirroredStrategy can be tested with two replicas."""

import contextlib
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A small synthetic dataset on disk (TFRecords + tables + manifest), shared by the tests of a session."""
    from mmctr_tf.data import synthetic

    path = str(tmp_path_factory.mktemp("data") / "small")
    # Few users with many impressions each, and a strong category-preference term: a world small enough for CI
    # in which DIN's history attention has something to learn within 3 epochs.
    cfg = synthetic.SyntheticConfig(story="attribute", num_users=400, num_items=300, impressions_per_user=50, dim=16,
                                    seq_len=20, max_hist=30, num_shards=2, seed=7, b_cate=2.0)
    synthetic.build(path, cfg, log=lambda *a: None)
    return path


@contextlib.contextmanager
def lock_holder(target):
    """Another live process holding the lock of the directory `target` (`mmctr_tf.locks`), as a second conversion or
    training would; yields the process. It is SIGKILLed on exit, so its lock file stays behind, stale."""
    code = ("import sys, time; from mmctr_tf import locks; held = locks.hold(sys.argv[1], 'a test holder'); "
            "held.__enter__(); print('held', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# ------------------------------------------------------------------------------------------- capability
# Synthetic data with a strong text/image signal: clicks depend on the target's text attribute, image attribute and
# their AND (synergy) matching the user's preferences, which only the frozen vectors reveal. Every model is trained
# at its default configuration (the constructor defaults = configs/models/<model>.cfg) with one protocol.
CAPABILITY_DATA = dict(num_users=1500, num_items=300, seq_len=10, max_hist=12, impressions_per_user=10,
                       text_attrs=4, image_attrs=4, dim=16, vector_noise=0.3, b_text=1.0, b_image=1.0,
                       b_synergy=2.0, b_cate=0.5, item_bias_std=0.2, user_bias_std=0.2, seed=0, story="attribute")
CAPABILITY_SEEDS = (0, 1, 2)
CAPABILITY_EPOCHS = 2


@pytest.fixture(scope="session")
def capability_protocol():
    """`train(model_name, seed, **hparams) -> test AUC` on the capability data: Adam(1e-3), BCE, batch 256,
    CAPABILITY_EPOCHS epochs, `keras.utils.set_random_seed(seed)` before building."""
    import keras
    import numpy as np

    from mmctr_tf.data.synthetic import SyntheticConfig, generate
    from mmctr_tf.data.tables import quantize
    from mmctr_tf.evaluation.metrics import auc
    from mmctr_tf.models import build_model
    from mmctr_tf.training.callbacks import reestimate_dice_statistics

    schema, splits, vectors, present, _ = generate(SyntheticConfig(**CAPABILITY_DATA))
    tables = {m: quantize(vectors[m], present[m]) for m in schema.modalities}
    train, test = splits["train"], splits["test"]

    def run(name, seed, **hparams):
        keras.utils.set_random_seed(seed)
        model = build_model(name, schema, tables, **hparams)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit({k: train[k] for k in schema.model_inputs}, train["label"], batch_size=256,
                  epochs=CAPABILITY_EPOCHS, verbose=0)
        # as the trainer does before every validation (DiceStatistics): Dice's moving statistics re-estimated on
        # 4096 training examples, so the model evaluated is the one trained
        rows = np.random.default_rng(seed).permutation(len(train["label"]))[:4096]
        reestimate_dice_statistics(model, ({k: train[k][rows[i:i + 1024]] for k in schema.model_inputs}
                                           for i in range(0, len(rows), 1024)))
        p = model.predict({k: test[k] for k in schema.model_inputs}, batch_size=2048, verbose=0)
        return float(auc(test["label"], p))

    return run


@pytest.fixture(scope="session")
def capability_runs(capability_protocol):
    """Test AUCs of the reference models on the capability data, {model: {seed: AUC}} for DIN and mm_concat at
    their default configuration, trained once per session for every capability test."""
    return {name: {seed: capability_protocol(name, seed) for seed in CAPABILITY_SEEDS} for name in ("din", "mm_concat")}
