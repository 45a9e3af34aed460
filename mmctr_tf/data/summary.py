"""The dataset statistics printed after a dataset is generated or converted (`run.make_data`, and `ensure_dataset`
when it generates a synthetic dataset on first use): users, items, examples per split, positive rate, the
Bayes-optimal AUC of each split where the generator knows it, OOV counts, vector tables, conversion statistics."""

from __future__ import annotations


def print_summary(manifest: dict, out_dir: str, log=print) -> None:
    """Writes the summary of the dataset described by `manifest` (stored at `out_dir`) line by line to `log`."""
    schema = manifest["schema"]
    # the category vocabulary has at least 2 rows (padding + one), even when the data has no category column
    cates = manifest.get("stats", {}).get("categories", schema["vocab"]["cate_id"] - 1)
    log(f"dataset {manifest.get('name')} -> {out_dir}")
    log(f"  users {schema['vocab']['user_id'] - 1}, items {schema['vocab']['item_id'] - 1}, "
        f"categories {cates}, seq_len {schema['seq_len']}, modalities {schema['modalities']}")
    log(f"  {'split':<6} {'examples':>9} {'users':>7} {'pos.rate':>9} {'bayes AUC':>10}  oov")
    for split, e in manifest["splits"].items():
        bayes = e.get("bayes_auc")
        bayes = f"{bayes:10.4f}" if bayes is not None else f"{'-':>10}"
        log(f"  {split:<6} {e['examples']:>9} {e.get('users', 0):>7} {e.get('positive_rate', 0):>9.4f} {bayes}  "
            f"{e.get('oov') or '-'}")
    for m, t in manifest.get("tables", {}).items():
        log(f"  table {m}: {t['rows']} x {t['dim']} {t['dtype']}, vectors present for {t['present']} items")
    if "events_read" in manifest.get("stats", {}):
        from mmctr_tf.data.converters.stats import format_stats  # (imports the converters only for their datasets)

        for line in format_stats(manifest):
            log(line)
