"""Human-readable conversion statistics."""

from __future__ import annotations

from typing import List


def format_stats(manifest: dict) -> List[str]:
    """Human-readable conversion statistics (the `stats` block of a converter's manifest)."""
    st = manifest.get("stats", {})
    if "events_read" not in st:
        return []
    lines = [
        f"  stats: users {st['users']}, items {st['items']}, categories {st['categories']}"
        + (f", brands {st['brands']}" if "brands" in st else "")
        + f", examples {st['examples']} (positives {st['positives']}, positive rate {st['positive_rate']:.4f})",
        f"  events: read {st['events_read']} from {st['users_read']} users; kept {st['events_kept']} "
        f"(users with < {manifest.get('protocol', {}).get('min_behaviors', '?')} events dropped: "
        f"{st['users_dropped_short']}, events beyond the {manifest.get('protocol', {}).get('max_behaviors', '?')} "
        f"most recent dropped: {st['events_beyond_max_behaviors']})",
    ]
    cov = st.get("coverage") or {}
    if cov:
        lines.append("  vector coverage: " + ", ".join(
            f"{m} {100 * c:.2f}% ({st['items_with_vector'][m]}/{st['items']})" for m, c in cov.items()))
    else:
        lines.append("  vector coverage: no modalities (no vector tables)")
    if st.get("items_with_text") is not None:
        lines.append(f"  items with a text (title) for run.embed_text: {st['items_with_text']}/{st['items']}")
    lines.append(f"  items without category (cate_id 0): {st['items_without_category']}")
    if st.get("negatives_unavailable"):
        lines.append(f"  positives without a possible negative (user saw every item): {st['negatives_unavailable']}")
    for e in st.get("read_errors", []):
        msg = f"  {e['file']}: {e['lines']} lines, {e['malformed']} malformed"
        if e["examples"]:
            msg += " (first: " + "; ".join(e["examples"][:3]) + ")"
        lines.append(msg)
    return lines
