"""SavedModel export for TF Serving (`keras.export.ExportArchive`).

Layout: `<export_dir>/<version>/` (TF Serving's model base path convention), with two signatures:

  serving_default     named int64 tensors: user_id [B], item_id [B], cate_id [B], hist_item_id [B, W],
                      hist_cate_id [B, W], hist_len [B] (W may differ from the training L: the model keeps the
                      most recent L). Output: {"probability": [B] float32}.
  serving_tf_example  `examples`: [B] serialized `tf.Example` with the TFRecords' features (label not needed;
                      histories of any length). Output: {"probability": [B] float32}.

The tf.Example signature parses its examples and calls the named signature's function, so the model's graph is
traced and stored once (DMAE's saved_model.pb: 392 KB, against 618 KB with one copy per signature; the latency of
either signature is unchanged). Only variables that the inference graph uses are written (the endpoints are traced
with training=False and the model is not tracked as a whole), so training-only parts (the DMAE decoder, Diff-MSIN's
noise) are absent; the frozen vector tables are inside.

Malformed requests (tests/test_fuzz.py): a wrongly typed, mis-sized or inconsistent feature fails with an
InvalidArgumentError naming it, missing features take their defaults, unknown features are ignored, and the
model keeps serving. A string that is not a serialized tf.Example at all fails in TF's ParseExample with a message
that embeds the raw bytes: TF Serving returns it as INVALID_ARGUMENT, but TF's Python binding cannot decode it
and raises UnicodeDecodeError instead of InvalidArgumentError (a TF limitation; catching it in the graph would need a
tf.data pipeline per request, which measured 1.7x the tf.Example signature's latency at batch 1).

Export is atomic and verified: the archive is written to a hidden temporary directory under `export_dir` (TF
Serving ignores non-numeric names), reloaded with `tf.saved_model.load`, both signatures are checked against the
Keras model on a batch, and only then renamed to its version number. An interrupted export leaves previous
versions intact; the next export on the same host deletes its temporary directory.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.data.schema import Schema

DEFAULT_SIGNATURE = "serving_default"
# Largest |probability difference| accepted between the reloaded SavedModel and the Keras model: graph-mode fused
# kernels differ from eager ones by ~3e-8 for DIN and up to ~2.3e-6 for Diff-MSIN (T diffusion steps of attention
# accumulate rounding; measured with run.bench's export at T = 5).
VERIFY_ATOL = 1e-5
EXAMPLE_SIGNATURE = "serving_tf_example"


def named_input_signature(schema: Schema) -> Dict[str, tf.TensorSpec]:
    """Int64 inputs of unknown shape: a SavedModel signature does not enforce the shapes it declares, and with a
    declared [None] graph optimisation drops any in-graph check of the rank (e.g. a [B, 1] `user_id` then failed
    deep in the model, in a ConcatOp naming no input); `check_named_inputs` checks them when a request runs."""
    return {n: tf.TensorSpec(None, tf.int64, name=n) for n in schema.model_inputs}


def check_named_inputs(inputs: Dict[str, tf.Tensor], schema: Schema) -> Dict[str, tf.Tensor]:
    """The named inputs with their ranks checked when the request runs and set statically: [batch] for the user and
    target ids and hist_len, [batch, history length] for histories. A wrong rank fails with TF's
    InvalidArgumentError 'Shape of tensor <feature> [...] is not compatible with expected shape [?]' (or [?,?]).
    (EnsureShape, not an assertion: graph optimisation computes the history width from the input itself, ahead of
    an assertion that only a control dependency orders before it.)"""
    return {name: tf.ensure_shape(inputs[name], [None] * (2 if name in schema.hist_features else 1))
            for name in schema.model_inputs}


def parse_serving_examples(serialized, schema: Schema) -> Dict[str, tf.Tensor]:
    """Parses serialized tf.Examples for serving; ragged histories are right-padded to a dense [B, W].

    Missing features take `Schema.serving_spec()`'s defaults (ids: the OOV row 0, histories: empty, hist_len: 0);
    features the schema does not know (`label`, `request_id`, anything else) are ignored. A feature of the wrong
    type or with the wrong number of values fails with TF's InvalidArgumentError naming it; so do history lists of
    one example with different lengths (e.g. 'hist_cate_id' shorter than 'hist_item_id'), which would otherwise
    pair behaviours with the wrong attributes once histories are cut to the most recent L.
    """
    feats = tf.io.parse_example(serialized, schema.serving_spec())
    first = schema.hist_features[0]
    checks = [tf.debugging.assert_equal(
        feats[name].row_lengths(), feats[first].row_lengths(),
        message=f"serving_tf_example: {name} and {first} must hold the same number of values in each example "
                f"(x: lengths of {name}, y: of {first}, per example)") for name in schema.hist_features[1:]]
    out = {}
    with tf.control_dependencies(checks):
        for name, value in feats.items():
            out[name] = value.to_tensor(default_value=0) if isinstance(value, tf.RaggedTensor) else tf.identity(value)
    for name in schema.hist_features:  # an empty batch or all-empty histories still need a 2-D tensor
        out[name] = tf.reshape(out[name], [tf.shape(serialized)[0], -1])
    return out


def remove_stale_temporaries(export_dir: str) -> list:
    """Deletes `.tmp-<version>-<pid>` directories of exports killed mid-write: those whose process no longer runs
    on this host (a live pid, or a name not of that form, is left alone). Returns the removed paths."""
    removed = []
    for name in os.listdir(export_dir) if os.path.isdir(export_dir) else []:
        pid = name.rsplit("-", 1)[-1]
        if not (name.startswith(".tmp-") and pid.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (maybe another export)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # exists, owned by someone else
        shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
        removed.append(os.path.join(export_dir, name))
    return removed


def next_version(export_dir: str) -> int:
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def serialize_examples(batch: Dict[str, np.ndarray], schema: Schema) -> np.ndarray:
    """numpy feature batch -> serialized tf.Examples (tests, verification and clients)."""
    n = len(batch["user_id"])
    out = []
    for i in range(n):
        feats = {}
        for name in schema.model_inputs:
            v = np.asarray(batch[name][i]).reshape(-1)
            if name in schema.hist_features:
                v = v[: int(batch["hist_len"][i])]
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64).tolist()))
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return np.array(out, dtype=object)


def export_model(model: keras.Model, export_dir: str, version: Optional[int] = None,
                 verify_batch: Optional[Dict[str, np.ndarray]] = None, atol: float = VERIFY_ATOL,
                 log=print) -> str:
    """Writes `model` as `<export_dir>/<version>` and returns that path (see module docstring)."""
    schema: Schema = model.schema
    os.makedirs(export_dir, exist_ok=True)
    for path in remove_stale_temporaries(export_dir):
        log(f"[export] removed {path}, left by an interrupted export")
    version = int(version) if version is not None else next_version(export_dir)
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final}: export version {version} exists already; choose another --version")
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def serve_named(inputs):
        return {"probability": model(check_named_inputs(inputs, schema), training=False)}

    archive = keras.export.ExportArchive()
    served = archive.add_endpoint(DEFAULT_SIGNATURE, serve_named, input_signature=[named_input_signature(schema)])

    def serve_examples(examples):
        # calls the named signature's function: the model is traced (and stored in the SavedModel) once, not once
        # per signature
        return served(parse_serving_examples(examples, schema))

    archive.add_endpoint(EXAMPLE_SIGNATURE, serve_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    try:
        archive.write_out(tmp, verbose=False)
        if verify_batch is None:
            from mmctr_tf.models.base import dummy_batch

            verify_batch = dummy_batch(schema, batch=4)
        verify_export(model, tmp, verify_batch, atol=atol)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[export] wrote {final} (signatures: {DEFAULT_SIGNATURE}, {EXAMPLE_SIGNATURE}); verified on "
        f"{len(verify_batch['user_id'])} examples")
    return final


def verify_export(model: keras.Model, path: str, batch: Dict[str, np.ndarray], atol: float = VERIFY_ATOL) -> float:
    """Reloads the SavedModel and checks both signatures against the Keras model; returns the max abs error."""
    schema: Schema = model.schema
    expected = np.asarray(model({k: batch[k] for k in schema.model_inputs}, training=False))
    loaded = tf.saved_model.load(path)
    sigs = loaded.signatures
    for name in (DEFAULT_SIGNATURE, EXAMPLE_SIGNATURE):
        if name not in sigs:
            raise RuntimeError(f"{path}: exported model lacks signature '{name}'")
    named = sigs[DEFAULT_SIGNATURE](**{k: tf.constant(np.asarray(batch[k], np.int64)) for k in schema.model_inputs})
    examples = sigs[EXAMPLE_SIGNATURE](examples=tf.constant(serialize_examples(batch, schema)))
    err = 0.0
    for sig, out in (("named", named), ("tf.Example", examples)):
        got = out["probability"].numpy()
        e = float(np.max(np.abs(got - expected))) if len(got) else 0.0
        if not np.all(np.isfinite(got)) or e > atol:
            raise RuntimeError(f"{path}: {sig} signature disagrees with the Keras model (max abs error {e:.3g})")
        err = max(err, e)
    return err
