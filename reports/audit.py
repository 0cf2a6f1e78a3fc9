"""The dataset audit report: audit folder -> load_audit -> audit_context -> render_audit -> write_audit_report.

``audit_context`` turns the dict :func:`suite.data.audit.audit` returns (or the audit
record, ``runs.AUDIT``, read back) into a flat context of plain values, thumbnails as
``data:`` URIs read from the dataset folder; ``render_audit`` fills ``audit.html.j2``
(autoescaped). :func:`suite.data.audit.write_audit` writes the page beside the record it
has just computed; ``write_audit_report`` re-renders it from a folder. Leakage,
duplicates, label conflicts, file facts and example pairs; never imports Keras or TensorFlow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from reports.toolkit import (
    DASH,
    as_dict,
    as_list,
    banner,
    class_count_table,
    fmt_int,
    fmt_seconds,
    fmt_share,
    fmt_value,
    read_json,
    render,
    synthetic_banner,
    thumbnail_uri,
    write_html,
)
from suite import runs

THUMB_SIZE = 128
_CATEGORY_TEXT = {
    "cross_split_exact": ("Cross-split exact duplicates",
                          "A test image byte-identical to a training (or validation) image."),
    "cross_split_near": ("Cross-split near duplicates",
                         "A test image that matches a training (or validation) image on pixels "
                         "but not byte for byte."),
    "within_split_exact": ("Within-split exact duplicates", "Byte-identical files inside one split."),
    "within_split_near": ("Within-split near duplicates", "Pixel-confirmed near copies inside one split."),
    "label_conflicts": ("Label conflicts", "The same or a near-same image filed under two labels."),
    "cross_split_group": ("Patients across splits",
                          "A test image whose patient group (from the groups file) also has images in training "
                          "(or validation): a model may have seen this patient's anatomy. Shown beside the "
                          "group's first training image."),
}
# Shown only when the audit has them (an audit without a groups file has no patient groups).
_OPTIONAL_CATEGORIES = ("cross_split_group",)
HIDDEN = "hidden"  # the skip reason of a hidden name (suite.data.discover.HIDDEN)


def _side(file: Mapping, root: pathlib.Path, cache: dict) -> dict:
    """One image of an example pair; ``cache`` keeps an image shown in several pairs from being read twice."""
    rel = str(file.get("path") or "")
    if rel and rel not in cache:
        cache[rel] = thumbnail_uri(root / rel, THUMB_SIZE, jpeg=True)
    return {"path": rel, "split": str(file.get("split") or ""), "label": str(file.get("label") or ""),
            "thumb": cache.get(rel)}


def _example_sections(examples: Mapping, root: pathlib.Path) -> list[dict]:
    cache: dict = {}
    sections = []
    for key, (title, text) in _CATEGORY_TEXT.items():
        if key in _OPTIONAL_CATEGORIES and key not in examples:
            continue
        block = as_dict(examples.get(key))
        pairs = []
        for item in as_list(block.get("shown")):
            score = item.get("score")
            pairs.append({
                "a": _side(as_dict(item.get("a")), root, cache),
                "b": _side(as_dict(item.get("b")), root, cache),
                "kind": str(item.get("kind") or ""),
                "group": None if item.get("group") is None else str(item.get("group")),
                "distance": fmt_value(item.get("distance")),
                "score": DASH if score is None else f"{float(score):.3f}",
            })
        total = int(block.get("total") or 0)
        sections.append({"id": key.replace("_", "-"), "title": title, "text": text,
                         "total": fmt_int(total), "partial": len(pairs) < total, "pairs": pairs})
    return sections


def _histograms(headers: Mapping) -> list[dict]:
    titles = {"size": "Image size (width\u00d7height)", "size_bucket": "Longest side", "aspect": "Aspect",
              "mode": "Pillow mode", "format": "File format"}
    out = []
    for key, title in titles.items():
        rows = as_list(headers.get(key))
        total = sum(int(r.get("count", 0)) for r in rows) or 1
        out.append({"title": title, "rows": [
            {"value": str(r.get("value")), "count": fmt_int(r.get("count")),
             "pct": fmt_share(r.get("count"), total), "width": round(100 * int(r.get("count", 0)) / total, 1)}
            for r in rows]})
    return out


def _duplicate_rows(result: Mapping, splits: list[str]) -> list[dict]:
    rows = []
    for key, name in (("exact", "exact (same bytes)"), ("near", "near (pixel-confirmed)")):
        block = as_dict(result.get(key))
        within = as_dict(block.get("pairs_within"))
        rows.append({"kind": name, "within": [fmt_int(within.get(s, 0)) for s in splits],
                     "cross": fmt_int(block.get("pairs_cross")), "pairs": fmt_int(block.get("pairs")),
                     "groups": fmt_int(block.get("groups")), "files": fmt_int(block.get("files")),
                     "redundant": fmt_int(block.get("redundant"))})
    return rows


def _headline(result: Mapping) -> list[dict]:
    leak = as_dict(result.get("leakage"))
    n_test = leak.get("test_images", 0)
    applicable = bool(leak.get("applicable"))
    near = as_dict(result.get("near"))
    exact = as_dict(result.get("exact"))
    within_exact = sum(int(v) for v in as_dict(exact.get("pairs_within")).values())
    within_near = sum(int(v) for v in as_dict(near.get("pairs_within")).values())
    items = []
    for key, label in (("cross_split_exact", "test images with a byte-identical training twin"),
                       ("cross_split_near", "test images with an exact or near training twin"),
                       ("cross_split_cluster", "test images in a cluster with a training image")):
        value = int(result.get(key) or 0)
        items.append({"value": fmt_int(value) if applicable else "n/a", "label": label,
                      "detail": f"{fmt_share(value, n_test)} of {fmt_int(n_test)} test images" if applicable else "",
                      "alert": applicable and value > 0})
    if "cross_split_group" in result:
        value = int(result.get("cross_split_group") or 0)
        items.append({"value": fmt_int(value) if applicable else "n/a",
                      "label": "test images whose patient is also in training",
                      "detail": f"{fmt_share(value, n_test)} of {fmt_int(n_test)} test images" if applicable else "",
                      "alert": applicable and value > 0})
    items.append({"value": fmt_int(result.get("label_conflicts")), "label": "label conflicts (clusters)",
                  "detail": f"{fmt_int(result.get('label_conflict_images'))} images involved",
                  "alert": bool(result.get("label_conflicts"))})
    items.append({"value": fmt_int(within_exact + within_near), "label": "within-split duplicate pairs",
                  "detail": f"{fmt_int(within_exact)} exact, {fmt_int(within_near)} near", "alert": False})
    return items


def _banners(result: Mapping) -> list[dict]:
    dataset = as_dict(result.get("dataset"))
    leak = as_dict(result.get("leakage"))
    banners = []
    if dataset.get("synthetic"):
        banners.append(synthetic_banner("This dataset is synthetic: its duplicates say nothing about real scans.",
                                        dataset.get("description")))
    if leak.get("applicable") and result.get("cross_split_near"):
        banners.append(banner(
            "error", "Test images leak from training",
            f"{fmt_int(result.get('cross_split_near'))} of {fmt_int(leak.get('test_images'))} test images have an "
            f"exact or near twin in training ({fmt_int(result.get('cross_split_exact'))} byte-identical): "
            "accuracy on the official test split is inflated."))
    if leak.get("applicable") and result.get("cross_split_group"):
        groups = as_dict(result.get("groups"))
        banners.append(banner(
            "error", "Patients straddle the official split",
            f"{fmt_int(result.get('cross_split_group'))} of {fmt_int(leak.get('test_images'))} test images belong to "
            f"{fmt_int(groups.get('groups_across_splits'))} patient groups that also have training images: "
            "accuracy on the official test split is not accuracy on new patients."))
    if result.get("label_conflicts"):
        banners.append(banner("warning", "Label conflicts",
                              f"{fmt_int(result.get('label_conflicts'))} groups of the same image carry "
                              "more than one label."))
    skipped = [s for s in map(as_dict, as_list(result.get("skipped"))) if s.get("reason") != HIDDEN]
    if skipped:
        banners.append(banner("warning", "Skipped files",
                              f"{len(skipped)} files could not be decoded as images; see the list below."))
    return banners


def _leakage_context(result: Mapping) -> dict:
    """The headline figures and the leakage section."""
    leak = as_dict(result.get("leakage"))
    return {
        "banners": _banners(result),
        "headline": _headline(result),
        "leakage_applicable": bool(leak.get("applicable")),
        "leakage_note": str(leak.get("note") or ""),
        "by_class": [_class_row(str(label), as_dict(v))
                     for label, v in as_dict(result.get("cross_split_by_class")).items()],
        "by_class_groups": "cross_split_group" in result,
        "groups": _groups_context(result),
    }


def _class_row(label: str, v: Mapping) -> dict:
    row = {"label": label, "test": fmt_int(v.get("test"))}
    for key in ("exact", "near", "group"):
        row[key], row[f"{key}_pct"] = fmt_int(v.get(key)), fmt_share(v.get(key), v.get("test"))
    return row


def _groups_context(result: Mapping) -> dict | None:
    """The patient-groups file against the dataset, or ``None`` when the audit had none."""
    if "groups" not in result:
        return None
    groups = as_dict(result.get("groups"))
    return {
        "file": str(groups.get("file") or ""),
        "rows": [{"key": key, "value": fmt_int(groups.get(name))} for key, name in (
            ("paths listed", "listed"), ("groups with images", "groups"), ("images in a group", "grouped_images"),
            ("images in the largest group", "largest"), ("images without a group (each its own)", "ungrouped"),
            ("listed paths that are not images of the dataset", "missing"),
            ("test images whose group is also in training", "test_sharing_group"),
            ("groups in both test and training", "groups_across_splits"))],
        "missing": [str(p) for p in as_list(groups.get("missing_examples"))],
        "ungrouped": [str(p) for p in as_list(groups.get("ungrouped_examples"))],
    }


def _contents_context(result: Mapping, dataset: Mapping) -> dict:
    """What the dataset holds: counts per split and class, duplicates, file facts, skipped files."""
    counts = as_dict(result.get("counts"))
    labels = [str(label) for label in as_list(dataset.get("labels"))]
    table = class_count_table(as_dict(counts.get("images_by_split_class")), labels,
                              as_dict(dataset.get("class_folders")))
    return {
        "n_files": fmt_int(counts.get("files")),
        "n_images": fmt_int(counts.get("images")),
        "n_hidden": int(counts.get("hidden") or 0),
        "class_counts": table,
        "dup_splits": table["splits"],
        "dup_rows": _duplicate_rows(result, table["splits"]),
        "near_candidates": fmt_int(as_dict(result.get("near")).get("candidates")),
        "clusters": {k: fmt_int(v) for k, v in as_dict(result.get("clusters")).items()},
        "histograms": _histograms(as_dict(result.get("headers"))),
        "skipped": [{"path": str(s.get("path") or ""), "split": str(s.get("split") or ""),
                     "label": str(s.get("label") or ""), "reason": str(s.get("reason") or "")}
                    for s in map(as_dict, as_list(result.get("skipped")))],
    }


def audit_context(result: Mapping) -> dict:
    """Build the flat template context of an audit.

    Args:
        result: the dict :func:`suite.data.audit.audit` returns (or the audit record read back).

    Returns:
        A dict of strings, numbers, booleans, lists and dicts for ``audit.html.j2``.
    """
    dataset = as_dict(result.get("dataset"))
    context = {
        "dataset_name": str(dataset.get("name") or ""),
        "dataset_root": str(dataset.get("root") or ""),
        "layout": str(dataset.get("layout") or ""),
        "created": str(result.get("created") or ""),
        "sections": _example_sections(as_dict(result.get("examples")), pathlib.Path(str(dataset.get("root") or "."))),
        "settings": [{"key": str(k), "value": fmt_value(v)} for k, v in as_dict(result.get("settings")).items()],
        "timings": [{"key": str(k).removesuffix("_s"), "value": fmt_seconds(v)}
                    for k, v in as_dict(result.get("timings")).items()],
        "cache_hit": fmt_value(result.get("cache_hit")),
    }
    context.update(_leakage_context(result))
    context.update(_contents_context(result, dataset))
    return context


def load_audit(folder) -> dict:
    """The audit record of an audit folder.

    Raises:
        FileNotFoundError: if the folder has no readable audit record.
    """
    folder = pathlib.Path(folder)
    problems: list[str] = []
    result = read_json(folder / runs.AUDIT, problems)
    if result is None:
        raise FileNotFoundError(f"{folder} is not an audit folder: {'; '.join(problems) or f'no {runs.AUDIT}'}")
    return result


def render_audit(result: Mapping) -> str:
    """The complete audit page, as HTML text, for an audit result."""
    return render("audit.html.j2", audit_context(result))


def write_audit_report(folder) -> pathlib.Path:
    """Re-render an audit folder's page from its record; returns the page's path (``runs.AUDIT_REPORT``)."""
    folder = pathlib.Path(folder)
    return write_html(folder / runs.AUDIT_REPORT, render_audit(load_audit(folder)))
