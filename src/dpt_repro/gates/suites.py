"""One suite per hand-over between stages. Each builds the tables and checks for `run_gate` from in-memory data,
so tests can feed crafted bad data without files; `stages/validate.py` loads the real inputs.

| gate | stops before | catches |
| --- | --- | --- |
| prepared | split | wrong shapes, dtype, pixel range, missing classes, shards that do not match their checksum |
| split | stage1 | wrong labelled count per class, invalid or repeated indices, labelled/validation overlap, test leakage |
| pseudo_labels | stage2 | a collapsed or skewed classifier, confidences out of range, disagreement with the known labels |
| generated | stage3 | wrong count per class, bad dtype/range/NaN, duplicate images, images that do not look like their class |
| mix | stage3 | a stage-3 labelled set whose share of generated images is not the configured one |
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd

from dpt_repro.config import GatesConfig
from dpt_repro.gates.core import Check, Table, pixel_stats


def _gxe():
    import great_expectations.expectations as gxe

    return gxe


def _image_checks(name: str, chunks: list[np.ndarray], shape: tuple[int, int, int]) -> list[Check]:
    """dtype and image shape of every chunk (shard) of a set; observed values as the chunks show them."""
    dtypes = sorted({str(x.dtype) for x in chunks})
    shapes = sorted({tuple(x.shape[1:]) for x in chunks})
    return [Check(f"{name}_dtype_is_uint8", dtypes == ["uint8"], ", ".join(dtypes), {"dtype": "uint8"}),
            Check(f"{name}_image_shape", shapes == [tuple(shape)], list(shapes[0]) if len(shapes) == 1 else shapes,
                  {"shape": list(shape)})]


def _image_expectations(gxe, count: int, classes: list[int]) -> list:
    return [gxe.ExpectTableRowCountToEqual(value=count),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
            gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255),
            gxe.ExpectColumnValuesToBeBetween(column="nan_count", min_value=0, max_value=0)]


def prepared(splits: dict[str, Iterable[tuple[np.ndarray, np.ndarray]]], manifest: dict, num_classes: int,
             shape: tuple[int, int, int]) -> tuple[list[Table], list[Check]]:
    """Each split's images and labels, read shard by shard (a split need not fit in memory), against params and
    the manifest that `prepare` wrote."""
    from dpt_repro.io import SplitDigest

    gxe = _gxe()
    classes = list(range(num_classes))
    tables, checks = [], []
    for split, chunks in splits.items():
        entry = manifest["splits"][split]
        frames, label_parts, headers, digest = [], [], [], SplitDigest(entry["count"])
        for images, labels in chunks:
            frames.append(pixel_stats(images).assign(label=labels).drop(columns="digest"))
            label_parts.append(np.asarray(labels))
            headers.append(images[:0])  # dtype and shape only
            digest.update(images, labels)
        labels = np.concatenate(label_parts)
        tables.append(Table(split, pd.concat(frames, ignore_index=True),
                            _image_expectations(gxe, entry["count"], classes)))
        checks += _image_checks(split, headers, shape)
        observed = digest.hexdigest()
        checks.append(Check(f"{split}_checksum_matches_manifest", observed == entry["sha256"], observed[:16],
                            {"sha256": entry["sha256"][:16]}))
        counts = np.bincount(labels, minlength=num_classes).tolist()
        checks.append(Check(f"{split}_class_counts_match_manifest", counts == entry["class_counts"], counts,
                            {"class_counts": entry["class_counts"]}))
    return tables, checks


def split(labelled: np.ndarray, validation: np.ndarray, train_labels: np.ndarray,
          train_images_at: Callable[[np.ndarray], np.ndarray], test_chunks: Iterable[np.ndarray], num_classes: int,
          labels_per_class: int, val_per_class: int) -> tuple[list[Table], list[Check]]:
    """The labelled subset: exact counts per class, valid unique indices, no overlap, no test image inside.
    `train_images_at(indices)` reads the labelled and validation images; the test images come shard by shard."""
    gxe = _gxe()
    n = len(train_labels)
    index = np.concatenate([labelled, validation])
    valid = (index >= 0) & (index < n)
    frame = pd.DataFrame({"index": index, "role": ["labelled"] * len(labelled) + ["validation"] * len(validation)})
    frame["label"] = np.where(valid, train_labels[np.clip(index, 0, n - 1)], -1)
    indices = Table("indices", frame, [
        gxe.ExpectColumnValuesToBeBetween(column="index", min_value=0, max_value=n - 1),
        gxe.ExpectColumnValuesToBeUnique(column="index"),  # unique across roles: labelled and validation disjoint
    ])
    counts = frame.groupby(["role", "label"]).size().unstack("role", fill_value=0).reindex(range(num_classes),
                                                                                            fill_value=0)
    per_class = Table("per_class", counts.reset_index(drop=True).reindex(columns=["labelled", "validation"],
                                                                           fill_value=0), [
        gxe.ExpectTableRowCountToEqual(value=num_classes),
        gxe.ExpectColumnValuesToBeBetween(column="labelled", min_value=labels_per_class, max_value=labels_per_class),
        gxe.ExpectColumnValuesToBeBetween(column="validation", min_value=val_per_class, max_value=val_per_class),
    ])
    test_digests = {d for chunk in test_chunks for d in pixel_stats(chunk)["digest"]}
    used = pixel_stats(train_images_at(index[valid]))["digest"]
    leaked = int(used.isin(test_digests).sum())
    return [indices, per_class], [Check("no_labelled_or_validation_image_in_test", leaked == 0, leaked,
                                        {"max_value": 0})]


def pseudo_labels(table: pd.DataFrame, num_classes: int, prior: np.ndarray, gates: GatesConfig,
                  labelled_index: np.ndarray, labelled_true: np.ndarray) -> tuple[list[Table], list[Check]]:
    """The pseudo-label table against the class prior of the labelled set and the labels we know."""
    gxe = _gxe()
    classes = list(range(num_classes))
    rows = Table("table", table, [
        gxe.ExpectTableRowCountToEqual(value=len(table)),
        gxe.ExpectColumnValuesToNotBeNull(column="pseudo_label"),
        gxe.ExpectColumnValuesToBeInSet(column="pseudo_label", value_set=classes),
        gxe.ExpectColumnDistinctValuesToEqualSet(column="pseudo_label", value_set=classes),
        gxe.ExpectColumnKLDivergenceToBeLessThan(column="pseudo_label", threshold=gates.pseudo_max_kl,
                                                 partition_object={"values": classes,
                                                                   "weights": [float(w) for w in prior]}),
        gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnMeanToBeBetween(column="confidence", min_value=gates.pseudo_min_mean_confidence,
                                        max_value=1.0),
        gxe.ExpectColumnValuesToBeUnique(column="index"),
    ])
    in_range = table["pseudo_label"].between(0, num_classes - 1)
    shares = np.bincount(table.loc[in_range, "pseudo_label"].to_numpy(), minlength=num_classes) / max(len(table), 1)
    share_table = Table("class_shares", pd.DataFrame({"class": classes, "share": shares}), [
        gxe.ExpectColumnValuesToBeBetween(column="share", min_value=gates.pseudo_min_share,
                                          max_value=gates.pseudo_max_share)])
    by_index = table.set_index("index")["pseudo_label"]
    agreement = float((by_index.reindex(labelled_index).to_numpy() == labelled_true).mean())
    checks = [Check("labelled_agreement_at_least", agreement >= gates.pseudo_min_labelled_agreement, agreement,
                    {"min_value": gates.pseudo_min_labelled_agreement})]
    return [rows, share_table], checks


def generated(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, num_classes: int, per_class: int,
              shape: tuple[int, int, int], gates: GatesConfig) -> tuple[list[Table], list[Check]]:
    """The generated set: K per class, valid pixels, no duplicates, and the stage-1 classifier agreeing with the
    class each image was generated for (the image looks like its class)."""
    gxe = _gxe()
    classes = list(range(num_classes))
    frame = pixel_stats(images).assign(label=labels, agrees=(predicted == labels).astype(float))
    expectations = _image_expectations(gxe, num_classes * per_class, classes) + [
        gxe.ExpectColumnValuesToBeUnique(column="digest"),
        gxe.ExpectColumnMeanToBeBetween(column="agrees", min_value=gates.generated_min_agreement, max_value=1.0)]
    counts = pd.DataFrame({"class": classes, "count": np.bincount(labels.clip(0), minlength=num_classes)[:num_classes]})
    per_class_table = Table("per_class", counts, [
        gxe.ExpectColumnValuesToBeBetween(column="count", min_value=per_class, max_value=per_class)])
    return [Table("images", frame, expectations), per_class_table], _image_checks("generated", [images], shape)


def mix(n_real: int, n_generated: int, labels_per_class: int, images_per_class: int, num_classes: int,
        tolerance: float) -> tuple[list[Table], list[Check]]:
    """The stage-3 labelled set: the share of generated images must be the one params configure."""
    gxe = _gxe()
    expected = images_per_class / (images_per_class + labels_per_class)
    frame = pd.DataFrame({"generated": np.r_[np.zeros(n_real), np.ones(n_generated)]})
    return [Table("labelled_set", frame, [
        gxe.ExpectTableRowCountToEqual(value=(labels_per_class + images_per_class) * num_classes),
        gxe.ExpectColumnMeanToBeBetween(column="generated", min_value=round(expected - tolerance, 6),
                                        max_value=round(expected + tolerance, 6)),
    ])], []
