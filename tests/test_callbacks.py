"""Trainer callbacks and what the trainer prints: best-epoch selection, early stopping, the progress-bar legend."""

import json

import keras
import numpy as np

from mmctr_tf.training import callbacks as cb
from mmctr_tf.training.trainer import TrainConfig, click_logloss, compile_model, describe_logs


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy")
    return model


def test_best_epoch_and_early_stop_follow_the_validation_metric(tmp_path, capsys):
    model = _tiny_model()
    best = cb.BestCheckpointEarlyStopping(str(tmp_path), "val_auc", patience=2)
    best.set_model(model)
    best.on_train_begin()
    kernels = {}
    for epoch, auc in enumerate([0.60, 0.65, 0.64, 0.66, 0.62, 0.61, 0.70]):
        model.layers[0].kernel.assign(np.full((3, 1), float(epoch), np.float32))  # epoch-specific weights
        kernels[epoch + 1] = float(epoch)
        best.on_epoch_end(epoch, {"val_auc": auc})
        if model.stop_training:
            break
        assert capsys.readouterr().out == ""  # nothing printed inside an epoch (the progress bar owns the line)
    # best 0.66 at epoch 4; epochs 5 and 6 bring no gain -> stop after epoch 6 (0.70 at epoch 7 is never seen)
    assert epoch + 1 == 6 and model.stop_training
    with open(tmp_path / cb.BEST_STATE) as f:
        assert json.load(f) == {"best": 0.66, "best_epoch": 4}
    restored = _tiny_model()
    restored.load_weights(str(tmp_path / cb.BEST_WEIGHTS))
    np.testing.assert_array_equal(restored.layers[0].kernel.numpy(), np.full((3, 1), kernels[4], np.float32))
    best.on_train_end()
    assert capsys.readouterr().out == ("[train] early stop after epoch 6: no val_auc gain for 2 epochs (best 0.66000 "
                                       "at epoch 4)\n")


def test_click_logloss_metric_equals_numpy_and_the_legend_names_auxiliary_losses():
    y = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    p = np.array([0.9, 0.2, 0.4, 0.7], np.float32)
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(click_logloss(y, p).numpy(), expected, rtol=1e-5)

    class WithAux(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, activation="sigmoid")
            self.tracker = keras.metrics.Mean(name="dec_loss")

        def call(self, x):
            return self.dense(x)[:, 0]

    model = WithAux()
    compile_model(model, TrainConfig(), steps_per_epoch=1)
    model.fit(np.ones((8, 3), np.float32), y.repeat(2), epochs=1, verbose=0)
    assert "logloss" in [m.name for m in model.metrics[1].metrics]
    assert "dec_loss" in describe_logs(model) and "val_logloss" in describe_logs(model)
    plain = _tiny_model()
    assert "auxiliary" not in describe_logs(plain)
