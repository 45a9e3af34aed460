"""Flags shared by the run/ commands (SPEC §5) and the config-file mechanism.

Configuration lives in absl flagfiles under configs/: `configs/models/<model>.cfg` and
`configs/datasets/<dataset>.cfg` are read automatically (in that order) before the command line, so any flag
given explicitly (including another `--flagfile`, e.g. configs/dmae_industrial.cfg) overrides them.
"""

from __future__ import annotations

import ast
import math
import os
import sys

from absl import flags
from absl import logging as absl_logging

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
FLAGS = flags.FLAGS


def _models_source():
    """(registry {name: class name}, {class name: (base names, `__init__` arguments, `fixed_hparams` or None)}) read
    from the source of mmctr_tf/models/ with `ast`, so that --model and a model's flags are checked before TensorFlow
    is imported (tests/test_cli.py checks both against `mmctr_tf.models`)."""
    import importlib.util

    root = os.path.join(importlib.util.find_spec("mmctr_tf").submodule_search_locations[0], "models")
    classes, registry = {}, {}
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(root, name)) as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                init = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
                fixed = [ast.literal_eval(b.value) for b in node.body if isinstance(b, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "fixed_hparams" for t in b.targets)]
                params = set() if init is None else {a.arg for a in init.args.args + init.args.kwonlyargs}
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                classes[node.name] = (bases, params - {"self", "schema", "kwargs"}, fixed[0] if fixed else None)
            elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                  and any(isinstance(t, ast.Name) and t.id == "MODELS" for t in node.targets)):
                registry = {ast.literal_eval(k): v.id for k, v in zip(node.value.keys, node.value.values)}
    return registry, classes


_MODEL_REGISTRY, _MODEL_CLASSES = _models_source()
MODEL_NAMES = tuple(_MODEL_REGISTRY)  # `mmctr_tf.models.MODELS`' keys, in its order

# ------------------------------------------------------------------------------------------- run / data
flags.DEFINE_string("model", "din", "Model: din, mm_concat, dmae, diff_msin; baselines: lr, fm, deepfm, wide_deep, "
                    "youtubenet, gru4rec, bst, simtier.")
flags.DEFINE_list("models", None, "Commands that run several models (run.compare, run.bench): registry names.")
flags.DEFINE_string("backbone", None, "Sequence backbone for plugin models (din default).")
flags.DEFINE_string("dataset", "synthetic", "synthetic (generated on first use), a converted dataset name, or a path.")
flags.DEFINE_string("data_dir", "tfrecords", "Where converted datasets live.")
flags.DEFINE_string("run_dir", None, "Run directory (default runs/<model>-<dataset>-s<seed>).")
flags.DEFINE_integer("epochs", 10, "Maximum epochs.")
flags.DEFINE_integer("batch_size", 1024, "Per-replica batch size (global = batch_size x replicas).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_float("lr_decay", 0.9, "Exponential learning-rate decay per epoch.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "lazy_adam"], "adam (Keras) | lazy_adam (embedding tables updated "
                  "on the rows a batch touches only; mmctr_tf/training/optimizers.py).")
flags.DEFINE_integer("seed", 0, "Random seed (weights, data order).")
flags.DEFINE_integer("patience", 10, "Early stopping: epochs without validation-AUC gain.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass over train).")
flags.DEFINE_bool("print_config", False, "Print the settings in force (configs/ files, then the command line) as "
                  "flagfile lines and exit: nothing is imported, trained or written.")
flags.DEFINE_integer("cpu_replicas", 1, "On CPU-only hosts, split the CPU into this many MirroredStrategy replicas.")
flags.DEFINE_string("verbose", "auto", "Keras fit verbosity: auto, 0, 1, 2.")
flags.DEFINE_bool("allow_changed_flags", False, "Resume a run with training flags other than those it was started "
                  "with (refused otherwise; --epochs and --patience may always grow); epochs.jsonl records the flags "
                  "in force on every later epoch.")
flags.DEFINE_list("click_buckets", ["0", "1", "5", "20"], "run.evaluate, run.compare: lower edges of the cold-start "
                  "buckets of the target item's training clicks (0,1,5,20: 0, 1-4, 5-19, 20+).")

# ------------------------------------------------------------------------------------------- model hparams
# None = the model's own default. Flags a model does not take are reported, not silently applied.
HPARAM_FLAGS = {
    "emb_dim": flags.DEFINE_integer("emb_dim", None, "ID embedding size."),
    "dnn_units": flags.DEFINE_list("dnn_units", None, "Prediction MLP sizes, e.g. 200,80."),
    "dnn_activation": flags.DEFINE_string("dnn_activation", None, "dice | prelu | relu."),
    "att_units": flags.DEFINE_list("att_units", None, "DIN attention MLP sizes, e.g. 80,40."),
    "att_activation": flags.DEFINE_string("att_activation", None, "dice | prelu | sigmoid."),
    "att_normalization": flags.DEFINE_string("att_normalization", None, "none (DIN paper) | softmax."),
    "dropout": flags.DEFINE_float("dropout", None, "Dropout rate in MLPs."),
    "table_storage": flags.DEFINE_string("table_storage", None,
                                         "Frozen table dtype in the model: float32|float16|int8."),
    "modalities": flags.DEFINE_list("modalities", None, "Modalities a multimodal model uses (default: all)."),
    "emb_l2": flags.DEFINE_float("emb_l2", None, "DIN mini-batch-aware L2 on the embedding rows of each batch."),
    # DMAE (docs/dmae.md)
    "lambda_dec": flags.DEFINE_float("lambda_dec", None, "DMAE: weight of the decoding loss (eq. 17); 0 = w/o IDDU."),
    "l": flags.DEFINE_integer("l", None, "DMAE: time segments of the interest distribution (eq. 10)."),
    "n": flags.DEFINE_integer("n", None, "DMAE: similarity intervals of the interest distribution (eq. 10)."),
    "num_buckets": flags.DEFINE_integer("num_buckets", None, "DMAE: N_B similarity buckets (eq. 2)."),
    "window": flags.DEFINE_integer("window", None, "DMAE: sliding-window size of MIFU (eq. 5-6)."),
    "mask_ratio": flags.DEFINE_float("mask_ratio", None, "DMAE: share of positions masked by the decoder (eq. 11)."),
    "mieu_dim": flags.DEFINE_integer("mieu_dim", None, "DMAE: dimension d of the interest representations."),
    "use_sine_cosine": flags.DEFINE_bool("use_sine_cosine", None, "DMAE: false = w/o MIEU-se (bucket only)."),
    "use_time_axis": flags.DEFINE_bool("use_time_axis", None, "DMAE: false = w/o MIEU-t (l = 1)."),
    "use_mifu": flags.DEFINE_bool("use_mifu", None, "DMAE: false = w/o MIFU (pool the encoder outputs directly)."),
    "decoder_units": flags.DEFINE_list("decoder_units", None, "DMAE: decoder MLP sizes (eq. 12)."),
    "q_activation": flags.DEFINE_string("q_activation", None, "DMAE: softmax (normalised, default) | sigmoid (paper)."),
    # Diff-MSIN (docs/diff_msin.md)
    "backbone_heads": flags.DEFINE_integer("backbone_heads", None, "BST backbone: attention heads."),
    "backbone_blocks": flags.DEFINE_integer("backbone_blocks", None, "BST backbone: transformer blocks."),
    "expert_units": flags.DEFINE_integer("expert_units", None, "Diff-MSIN: expert size d_e (eq. 3-5)."),
    "num_heads": flags.DEFINE_integer("num_heads", None, "Diff-MSIN: heads of the SRC denoiser and FDAF attention."),
    "diffusion_steps": flags.DEFINE_integer("diffusion_steps", None, "Diff-MSIN: T, diffusion steps (eq. 10-11)."),
    "alpha_start": flags.DEFINE_float("alpha_start", None, "Diff-MSIN: first alpha_t of the linear schedule."),
    "alpha_end": flags.DEFINE_float("alpha_end", None, "Diff-MSIN: last alpha_t of the linear schedule."),
    "diffusion_schedule": flags.DEFINE_string("diffusion_schedule", None, "Diff-MSIN: linear (paper) | cosine."),
    "reverse_coef": flags.DEFINE_string("reverse_coef", None, "Diff-MSIN: reverse-step factor, see docs/diff_msin.md."),
    "tokens_per_vector": flags.DEFINE_integer("tokens_per_vector", None, "Diff-MSIN: SRC tokens per expert vector "
                                              "(1 = the paper; 0 = the authors' per-position mode)."),
    "w1": flags.DEFINE_float("w1", None, "Diff-MSIN: weight of L_con (eq. 19)."),
    "w2": flags.DEFINE_float("w2", None, "Diff-MSIN: weight of L_syn (eq. 19)."),
    "syn_margin": flags.DEFINE_float("syn_margin", None, "Diff-MSIN: non-click margin of L_syn (eq. 13)."),
    "target_vectors": flags.DEFINE_bool("target_vectors", None, "Diff-MSIN: also feed the target's modality vectors "
                                        "to the prediction MLP (not in the paper)."),
    "cross_layers": flags.DEFINE_integer("cross_layers", None, "Diff-MSIN: DCN cross layers in FDAF (eq. 16)."),
    "use_mfe": flags.DEFINE_bool("use_mfe", None, "Diff-MSIN: false = w/o MFE (with use_src=false: w/o MFE and SRC)."),
    "use_src": flags.DEFINE_bool("use_src", None, "Diff-MSIN: false = w/o SRC."),
    "use_fdaf": flags.DEFINE_bool("use_fdaf", None, "Diff-MSIN: false = w/o FDAF."),
    # Baselines (mmctr_tf/models/baselines.py)
    "gru_units": flags.DEFINE_integer("gru_units", None, "GRU4Rec: GRU hidden size (default: history width)."),
    "simtier_eps": flags.DEFINE_float("simtier_eps", None, "SimTier: width of the cosine bins over [-1, 1]."),
    "simtier_dim": flags.DEFINE_integer("simtier_dim", None, "SimTier: size of each bin's learnable vector."),
}


def int_list(v):
    return None if v is None else [int(x) for x in v]


def _typed(name, value):
    return int_list(value) if isinstance(value, list) and name.endswith("_units") else value


def hparams_from_flags() -> dict:
    """Model hyper-parameters from the flags as parsed (config files included by `parse_with_configs`)."""
    out = {name: _typed(name, holder.value) for name, holder in HPARAM_FLAGS.items() if holder.value is not None}
    if FLAGS.backbone:
        out["backbone"] = FLAGS.backbone
    return out


def model_hparams(model: str) -> dict:
    """Hyper-parameters of one model for commands that run several: its configs/models/<model>.cfg, then the
    hyper-parameter flags given explicitly on the command line."""
    out = {}
    path = os.path.join(CONFIG_DIR, "models", f"{model}.cfg")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("--") or "=" not in line:
                    continue
                name, value = line[2:].split("=", 1)
                if name in HPARAM_FLAGS:
                    out[name] = _typed(name, FLAGS[name].parser.parse(value))
    for name, holder in HPARAM_FLAGS.items():
        if FLAGS[name].present:
            out[name] = _typed(name, holder.value)
    if FLAGS.backbone:
        out["backbone"] = FLAGS.backbone
    return out


def accepted_model_hparams(model: str, log=print) -> dict:
    """`model_hparams(model)` restricted to what the model takes (for commands that run several models, where a
    hyper-parameter flag applies to every model that takes it); the flags a model does not take are reported."""
    hp = model_hparams(model)
    ok = model_hparam_names(model)
    dropped = sorted(set(hp) - ok)
    if dropped:
        log(f"[{model}] does not take {', '.join('--' + d for d in dropped)}; not applied to it")
    return {k: v for k, v in hp.items() if k in ok}


def check_hparams(model: str, hparams: dict) -> None:
    unknown = sorted(set(hparams) - model_hparam_names(model))
    if unknown:
        raise flags.ValidationError(f"--model={model} does not take flag(s) {', '.join('--' + u for u in unknown)}")


def model_hparam_names(model: str) -> frozenset:
    """The hyper-parameters the registered `model` takes, as `mmctr_tf.models.accepted_hparams` finds them: the
    arguments of the `__init__` of its class and of each base class up to `CTRModel`, less `fixed_hparams`
    (`_models_source`; a flag the model does not take is refused before TensorFlow is imported)."""
    if model not in _MODEL_REGISTRY:
        raise ValueError(f"unknown --model '{model}' (choose one of {', '.join(sorted(_MODEL_REGISTRY))})")
    names, fixed, todo = set(), None, [_MODEL_REGISTRY[model]]
    while todo:  # the class and its bases defined in mmctr_tf/models/ (CTRModel's base, keras.Model, is not)
        bases, params, own_fixed = _MODEL_CLASSES[todo.pop(0)]
        names |= params
        fixed = own_fixed if fixed is None else fixed  # the nearest class that sets it, as getattr finds it
        todo += [b for b in bases if b in _MODEL_CLASSES]
    return frozenset(names - set(fixed or ()))


def _flag_value(argv, name):
    """Last value of --name in argv, looking inside --flagfile files too."""
    value = None
    for i, a in enumerate(argv):
        if a.startswith("--flagfile=") and os.path.exists(a.split("=", 1)[1]):
            with open(a.split("=", 1)[1]) as f:
                value = _flag_value([line.strip() for line in f], name) or value
        elif a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def with_config_files(argv):
    """argv with configs/models/<model>.cfg and configs/datasets/<dataset>.cfg flagfiles inserted first."""
    extra = []
    model = _flag_value(argv, "model") or "din"
    dataset = _flag_value(argv, "dataset") or "synthetic"
    for path in (os.path.join(CONFIG_DIR, "models", f"{model}.cfg"),
                 os.path.join(CONFIG_DIR, "datasets", f"{os.path.basename(dataset.rstrip('/'))}.cfg")):
        if os.path.exists(path):
            extra.append(f"--flagfile={path}")
    return argv[:1] + extra + argv[1:]


def parse_with_configs(argv):
    """absl `flags_parser` for app.run: reads config files, then the command line."""
    return FLAGS(with_config_files(argv))


def parse_for_several_models(argv):
    """absl `flags_parser` for commands that run several models (run.compare, run.bench): like
    `parse_with_configs` but without configs/models/<--model>.cfg, because each model's own config is read by
    `model_hparams(model)` and one model's file must not become explicit flags for all of them."""
    full = with_config_files(argv)
    inserted = full[1:len(full) - len(argv) + 1]
    model_dir = os.path.join(CONFIG_DIR, "models") + os.sep
    kept = [a for a in inserted if not a.startswith(f"--flagfile={model_dir}")]
    return FLAGS(argv[:1] + kept + argv[1:])


# ------------------------------------------------------------------------------------------- validation
def _in_range(lo, hi=None):
    return lambda v: lo <= v and (hi is None or v <= hi)


# flag -> (test of its value, what it must be). Checked by `flag_error` before TensorFlow is imported and before
# anything is written.
CHECKS = {
    "model": (lambda v: v in MODEL_NAMES, f"one of {', '.join(MODEL_NAMES)}"),
    "models": (lambda v: v is None or (bool(v) and all(m.strip() in MODEL_NAMES for m in v)),
               f"a list of {', '.join(MODEL_NAMES)}"),
    "epochs": (_in_range(1), ">= 1"),
    "batch_size": (_in_range(1), ">= 1"),
    "learning_rate": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "lr_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "seed": (_in_range(0, 2 ** 32 - 1), "in [0, 2^32 - 1]"),
    "patience": (_in_range(1), ">= 1"),
    "steps_per_epoch": (lambda v: v is None or v >= 1, ">= 1 (or not given: one pass over the training split)"),
    "cpu_replicas": (_in_range(1), ">= 1"),
    "verbose": (lambda v: v in ("auto", "0", "1", "2"), "auto, 0, 1 or 2"),
}
# the flags of `run.train` (and, without --model, of the commands that train several models)
TRAIN_FLAGS = ("model", "epochs", "batch_size", "learning_rate", "lr_decay", "seed", "patience", "steps_per_epoch",
               "cpu_replicas", "verbose")


def flag_error(names, checks=None):
    """'--flag=value: must be ...' for the first flag among `names` whose value is not what it must be (`CHECKS`,
    updated with the command's own `checks`), else None. Absl only: call it first in `main`."""
    checks = {**CHECKS, **(checks or {})}
    for name in names:
        ok, must = checks[name]
        value = FLAGS[name].value
        if not ok(value):
            return f"--{name}={','.join(value) if isinstance(value, list) else value}: must be {must}"
    return None


def train_config(**overrides):
    from mmctr_tf.training.trainer import TrainConfig

    cfg = TrainConfig(model=FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, run_dir=FLAGS.run_dir,
                      epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                      lr_decay=FLAGS.lr_decay, optimizer=FLAGS.optimizer, seed=FLAGS.seed, patience=FLAGS.patience,
                      jit_compile=FLAGS.jit_compile, steps_per_epoch=FLAGS.steps_per_epoch,
                      cpu_replicas=FLAGS.cpu_replicas, allow_changed_flags=FLAGS.allow_changed_flags,
                      verbose=int(FLAGS.verbose) if FLAGS.verbose.isdigit() else FLAGS.verbose)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def config_in_force(models=None) -> str:
    """`--print_config`: the config files read and every flag of the command with its value in force, as flagfile
    lines (each set value marked with where it came from: a config file or the command line; unmarked = the flag's
    default), then, for commands that run several models, each model's hyper-parameters."""
    argv = sys.argv
    files = [a.split("=", 1)[1] for a in with_config_files(argv)[1:len(with_config_files(argv)) - len(argv) + 1]]
    if models is not None:
        files = [f for f in files if not f.startswith(os.path.join(CONFIG_DIR, "models"))]
    lines = ["# config files read before the command line: " + (", ".join(os.path.relpath(f) for f in files) or "none")]
    main_file = os.path.abspath(argv[0])
    modules = [m for m in FLAGS.flags_by_module_dict() if m == __name__ or os.path.abspath(m) == main_file]
    names = sorted({f.name for m in modules for f in FLAGS.get_flags_for_module(m)} - {"print_config"})
    for name in names:
        flag = FLAGS[name]
        if flag.value is None or (name in HPARAM_FLAGS and models is not None):
            continue
        value = ",".join(map(str, flag.value)) if isinstance(flag.value, list) else flag.value
        value = str(value).lower() if isinstance(value, bool) else value
        source = next((os.path.relpath(f) for f in reversed(files) if _flag_value([f"--flagfile={f}"], name)),
                      None)
        if _flag_value(argv[1:], name) is not None:
            source = "command line"
        lines.append(f"--{name}={value}" + (f"    # {source}" if flag.present and source else ""))
    for m in models or ():
        hp = model_hparams(m)
        lines.append(f"# {m}: " + (" ".join(f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                                            for k, v in sorted(hp.items())) or "its own defaults"))
    return "\n".join(lines)


def quiet_tf():
    """Every command's first call in `main`: no INFO lines from absl, TensorFlow's Python logger or libraries
    (matplotlib, ...) unless absl's `--verbosity` is given (0 = INFO, 1 = DEBUG), and TensorFlow's C++ log at
    WARNING and above (`TF_CPP_MIN_LOG_LEVEL=2` unless set). The command's own output is plain `print`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def fail(msg: str, code: int = 2):
    print(msg, file=sys.stderr)
    return code
