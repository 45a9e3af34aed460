"""Config files and shared flags of the run/ commands."""

import os
import re
import shlex

from absl import flags
from absl.testing import flagsaver
from conftest import REPO, run_mains

from run import common


def test_config_files_come_first_so_explicit_flags_win(tmp_path):
    argv = common.with_config_files(["prog", "--model=din", "--emb_dim=4"])
    assert argv[1].endswith(os.path.join("configs", "models", "din.cfg"))
    assert argv[2].endswith(os.path.join("configs", "datasets", "synthetic.cfg"))
    assert argv[-1] == "--emb_dim=4"
    with flagsaver.flagsaver():
        common.FLAGS.unparse_flags()
        common.FLAGS(argv)
        assert common.FLAGS.emb_dim == 4 and common.FLAGS.att_units == ["80", "40"]
        assert common.hparams_from_flags()["att_units"] == [80, 40]


def test_flagfile_on_the_command_line_selects_dataset_config():
    argv = common.with_config_files(["prog", "--model=din", "--flagfile=configs/dmae_industrial.cfg"])
    assert any(a.endswith("synthetic_industrial.cfg") for a in argv)


def test_model_hparams_reads_each_models_config_then_explicit_flags():
    with flagsaver.flagsaver():
        common.FLAGS.unparse_flags()
        common.FLAGS(["prog", "--dnn_units=7,3"])
        hp = common.model_hparams("din")
        assert hp["dnn_units"] == [7, 3] and hp["att_activation"] == "dice" and hp["emb_dim"] == 16


def test_unknown_hparam_for_model_is_refused():
    import pytest

    with pytest.raises(flags.ValidationError, match="--lambda_dec"):
        common.check_hparams("din", {"lambda_dec": 0.5})


def test_model_names_without_tensorflow_are_the_registry():
    """run.common refuses a bad --model before TensorFlow is imported, from the registry as read from the source."""
    from mmctr_tf.models import MODELS

    assert common.MODEL_NAMES == tuple(MODELS)


def test_hparam_names_without_tensorflow_are_the_models_own():
    """The flags each model takes, read from the source (`run.common.model_hparam_names`, for refusing a flag before
    TensorFlow is imported), are the arguments `build_model` passes it (`accepted_hparams`, from the classes)."""
    from mmctr_tf.models import MODELS, accepted_hparams

    for name, cls in MODELS.items():
        assert common.model_hparam_names(name) == accepted_hparams(cls), name
    assert "emb_dim" not in common.model_hparam_names("lr") and "lambda_dec" in common.model_hparam_names("dmae")


def test_readme_commands_pass_their_flag_checks():
    """Every `python -m run.train|compare|bench ...` command of README.md, with `--print_config` added, passes the
    command's flag checks (exit 0, TensorFlow not imported): a check that refuses what the README tells users to run
    fails here (it did: `run.bench --latency_batches=` of the scaling table). Commands with placeholders ([...],
    `...`, `=T`) are left out."""
    readme = open(os.path.join(REPO, "README.md")).read()
    commands = sorted({c.strip() for c in re.findall(r"python -m (run\.(?:train|compare|bench)\b[^`|\n]*)", readme)
                       if not re.search(r"\[|\.\.\.|=T\b", c)})
    assert len(commands) >= 15, commands
    results = run_mains([shlex.split(c, comments=True) + ["--print_config"] for c in commands])
    for command, (rc, err, tf_imported) in zip(commands, results):
        assert rc == 0 and not tf_imported, (command, rc, err)
