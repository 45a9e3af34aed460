"""The shared model test base: every model of the registry (`mmctr_tf.models.MODELS`), plus a few non-default
variants, goes through the same life cycle, so a new model is covered by registering it:

  build (with frozen tables) -> one `fit` step through the trainer's compile (loss, optimizer, metrics)
  -> scores are probabilities, finite on empty histories and out-of-vocabulary targets, blind to padding
  -> `.keras` save -> `keras.saving.load_model` -> the same config and the same predictions
  -> SavedModel export -> `tf.saved_model.load` -> both signatures (`serving_default`, `serving_tf_example`)
     equal the Keras model on a batch holding empty histories.

Models run at tiny sizes (each takes the hyper-parameters of `TINY` it accepts). Model-specific maths, masking and
capability tests live in the model's own test file and tests/test_capability.py.

Run: python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.export import saved_model as sm
from mmctr_tf.models import MODELS, accepted_hparams, build_model
from mmctr_tf.training.trainer import TrainConfig, compile_model

# Tiny sizes; each model takes those it accepts (LR takes none).
TINY = dict(emb_dim=4, dnn_units=[8], att_units=[4], gru_units=4, simtier_dim=2, backbone_heads=1,
            mieu_dim=4, num_buckets=4, l=3, n=3, window=3, decoder_units=[4],
            expert_units=4, num_heads=2, diffusion_steps=2)
# Non-default variants whose configuration must survive the round trips too.
VARIANTS = [
    ("din", {"backbone": "gru4rec", "att_normalization": "softmax"}),
    ("dmae", {"lambda_dec": 0.0, "use_mifu": False, "use_sine_cosine": False, "q_activation": "sigmoid"}),
    ("diff_msin", {"backbone": "bst", "tokens_per_vector": 2, "diffusion_schedule": "cosine", "use_fdaf": False,
                   "modalities": ["image"]}),
]
CASES = [(name, {}) for name in sorted(MODELS)] + VARIANTS


def case_id(case):
    name, extra = case
    return name + "".join(f"-{k}={v}" for k, v in extra.items()).replace(" ", "")


def tiny_hparams(name, extra):
    ok = accepted_hparams(MODELS[name])
    return {**{k: v for k, v in TINY.items() if k in ok}, **extra}


@pytest.fixture(scope="module")
def data(small_dataset):
    return Dataset(small_dataset)


@pytest.fixture(scope="module")
def batch(data):
    """48 test examples; the first three get an empty history (padding only), the third an OOV target."""
    feats, _ = next(iter(data.tf_dataset("test", 48)))
    x = {k: v.numpy() for k, v in feats.items()}
    x["hist_len"][:3] = 0
    for f in data.schema.hist_features:
        x[f][:3] = 0
    x["item_id"][2] = 10**9
    return x


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_model_life_cycle(case, data, batch, tmp_path):
    name, extra = case
    hp = tiny_hparams(name, extra)
    keras.utils.set_random_seed(0)  # the same initial weights whichever tests ran before in this worker
    model = build_model(name, data.schema, data.tables, **hp)
    assert model.uses_modalities == bool(model.modalities)

    # one training step through the trainer's compile: finite loss, every trainable weight that got a gradient moved
    compile_model(model, TrainConfig(learning_rate=0.01), steps_per_epoch=1)
    model.run_eagerly = True  # tracing a graph costs more than one step; graph-mode fit is tested by the trainer
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(data.tf_dataset("train", 64, shuffle=True, seed=0), steps_per_epoch=1, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    moved = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert sum(moved) >= len(moved) // 2, f"{name}: only {sum(moved)} of {len(moved)} weights changed"

    p = model(batch, training=False).numpy()
    # [0, 1], not (0, 1): float32's sigmoid is exactly 1 above a logit of ~17, which the untrained multimodal models
    # reach here (DIN's unnormalised attention sums 20 history vectors of norm ~5; Dice passes the scale through)
    assert p.shape == (48,) and np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    # padding never leaks into a score (slots >= hist_len filled with a real id)
    noisy = {k: v.copy() for k, v in batch.items()}
    for f in data.schema.hist_features:
        noisy[f][np.arange(data.schema.seq_len)[None, :] >= noisy["hist_len"][:, None]] = 3
    np.testing.assert_allclose(model(noisy, training=False).numpy(), p, rtol=0, atol=1e-6)
    # ... while the scores do depend on the history (else the check above would hold for any model)
    other = dict(batch, hist_len=np.roll(batch["hist_len"], 1))
    for f in data.schema.hist_features:
        other[f] = np.roll(batch[f], 1, axis=0)
    assert not np.allclose(model(other, training=False).numpy(), p, atol=1e-6)

    # .keras file: same class, same config, same predictions
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    clone = keras.saving.load_model(path)
    assert type(clone) is type(model) and clone.get_config() == model.get_config()
    np.testing.assert_allclose(clone(batch, training=False).numpy(), p, rtol=0, atol=1e-6)

    # SavedModel: both signatures equal the Keras model
    exported = sm.export_model(model, str(tmp_path / "export"), verify_batch=batch, log=lambda *a: None)
    loaded = tf.saved_model.load(exported)
    named = loaded.signatures["serving_default"](
        **{k: tf.constant(batch[k].astype(np.int64)) for k in data.schema.model_inputs})["probability"].numpy()
    examples = loaded.signatures["serving_tf_example"](
        examples=tf.constant(sm.serialize_examples(batch, data.schema)))["probability"].numpy()
    np.testing.assert_allclose(named, p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(examples, p, rtol=0, atol=1e-6)
