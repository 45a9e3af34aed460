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
    bad = common.flag_error(common.TRAIN_FLAGS)
    if bad:
        return common.fail(f"run.train: {bad}")
    hparams = common.hparams_from_flags()
    try:
        common.check_hparams(FLAGS.model, hparams)  # before TensorFlow is imported
    except flags.ValidationError as e:
        return common.fail(f"run.train: {e}")
    if FLAGS.print_config:
        print(common.config_in_force())
        return 0
    common.quiet_tf()
    from mmctr_tf.data.schema import SchemaError
    from mmctr_tf.locks import LockHeld
    from mmctr_tf.training.callbacks import NonFiniteLossError
    from mmctr_tf.training.trainer import train

    cfg = common.train_config()
    try:
        train(cfg, hparams)
    except (SchemaError, ValueError, FileNotFoundError, NonFiniteLossError, LockHeld) as e:
        return common.fail(f"run.train: {e}")
    except KeyboardInterrupt:
        return common.fail(f"run.train: interrupted; {interrupted_state(cfg.resolved_run_dir(), cfg.epochs)}", 130)
    return 0


def interrupted_state(run_dir: str, epochs: int) -> str:
    """What a run interrupted by Ctrl-C keeps, and how to go on (one line)."""
    from mmctr_tf.training.callbacks import read_epochs

    try:
        done = len(read_epochs(run_dir))
    except ValueError:
        done = 0
    if not done:
        return f"no epoch had finished, nothing to resume in {run_dir}; run the same command again to start over"
    if done >= epochs:
        return (f"all {done} epochs had finished; the state is kept in {run_dir}: run the same command again to "
                f"evaluate")
    kept = f"epochs 1-{done}" if done > 1 else "epoch 1"
    return f"{kept} of {epochs} kept in {run_dir}; run the same command again to resume from epoch {done + 1}"


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_with_configs)
