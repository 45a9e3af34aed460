"""Trains one model: `python -m run.train --model=dmae --dataset=electro`.

Reads configs/models/<model>.cfg and configs/datasets/<dataset>.cfg first; explicit flags override them.
Started again with the same flags (or the same --run_dir), a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

from absl import app, flags

from run import common

FLAGS = common.FLAGS


def main(argv):
    del argv
    common.quiet_tf()
    from mmctr_tf.data.schema import SchemaError
    from mmctr_tf.training.callbacks import NonFiniteLossError
    from mmctr_tf.training.trainer import train

    hparams = common.hparams_from_flags()
    try:
        common.check_hparams(FLAGS.model, hparams)
        train(common.train_config(), hparams)
    except (SchemaError, ValueError, FileNotFoundError, NonFiniteLossError, flags.ValidationError) as e:
        return common.fail(f"run.train: {e}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_with_configs)
