"""`covid-cxr evaluate`: measure a covid-cxr model on labelled data, with confidence intervals.

    covid-cxr evaluate --model DIR --data DIR [--json] [--out REPORT_DIR] [--pipeline-root ROOT] [--key KEY]

--model: as for `covid-cxr predict` (pushed version dir, serving base dir -> newest version, any
exported SavedModel, or a Trainer model artifact).

--data, either
  * curated TFRecords (a directory with ``records-*.tfrecord.gz``, written by ``covid-cxr curate``
    or the synthetic generator): the truth is each record's ``label_index``; records go through the
    model's ``serving_default`` signature exactly as TFMA sends them; ``source``, ``view`` and ``sex``
    give per-slice breakdowns, ``group`` the patient groups of the shortcut audit. The data's
    summary.json task must be the model's task;
  * a class-per-folder tree: each image's class is its *nearest* ancestor folder whose name maps to a
    finding (so ``train/NORMAL/x.jpeg`` works). Default map, case-insensitive -- the names the
    curation adapters use: finding names themselves (covid, normal, pneumonia, other_opacity) plus
    the radiography adapter's (COVID, COVID-19, Normal, Viral Pneumonia, Lung_Opacity / Lung Opacity)
    and the Kermany adapter's (NORMAL, PNEUMONIA); ``--class-map FOLDER=FINDING,...`` (the curation
    folder source's syntax and rule: exact folder names, case included) replaces it. Findings map to the
    model task's classes (``features.Task.finding_to_class``); files whose finding the task does not use, in no mapped
    folder, or unreadable are skipped and listed. Images are prepared exactly as curation/predict do
    (``data/images.py``: DICOM LUTs, MONOCHROME1, border crop, max side 512, or the curation settings
    in the model's metadata: ``serving.predict.Preparation``) and sent through
    ``predict_image``. Patient groups: a DICOM's PatientID (hashed, never shown), else the Kermany
    file-name patient (``person12_...``), else the file itself. Source: a keyed pseudonym of the
    top-level folder when the class folders are below it (``folder-<pseudonym>``, never its name),
    else the data directory's name. The pseudonym key is curation's (``--key``, else
    ``$COVID_CXR_PSEUDONYM_KEY``, else the per-user key file, created on first use and announced on stderr).

Metrics (evaluation/metrics.py) use the model's own stored decision threshold -- i.e. the model's
``label_index`` output: COVID probability > threshold (three-class: else the more probable other
class; a three-class model exported before that rule serves the argmax).
sensitivity / specificity / precision / NPV are COVID vs the rest; accuracy is over all classes;
each has a Wilson 95% CI. AUC is the COVID probability's rank AUC with a stratified bootstrap 95%
CI. Three-class adds macro-F1 and per-class one-vs-rest metrics. The shortcut audit
(evaluation/shortcut_audit.py) runs on the same images.

The misclassified films, most confidently wrong first (evaluation/errors.py), are listed in the
report by record / file reference, source, view and sex when known (and, for curated TFRecords,
the keyed patient pseudonym).

Films that are near copies of ones the model trained or validated on (serving/near_copies.py: the
perceptual hashes the Trainer stored with the model) are counted and listed by the same names, with a
WARNING; they stay in the figures. A model exported without the hashes gets a note instead.

--out writes report.json, report.html (self-contained: plots inlined as base64), roc.png,
confusion_matrix.png, errors.png (thumbnails of the misclassified films) and training_curves.png
(history from the model's metadata asset, else the Trainer's history.json next to the pushed
model's artifact or under --pipeline-root).
--pipeline-root adds the newest StatisticsGen / ExampleValidator / Evaluator results (TFDV
statistics and anomalies, TFMA slice metrics) to the report.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
from typing import Mapping, Optional, Sequence

import click
import numpy as np

from covid_cxr.data import features, images, jsonfile, pseudonym, writer
from covid_cxr.data.sources import kermany, parse_class_map, radiography
from covid_cxr.data.sources.folder import mapped_finding, unmatched_names
from covid_cxr.evaluation import (artifacts, attention_audit, errors, html_report, metrics, model_card,
                                  shortcut_audit)
from covid_cxr.pipeline.config import UserPath
from covid_cxr.serving import model_metadata, near_copies, predict, typicality

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
ROC_PNG = "roc.png"
CONFUSION_PNG = "confusion_matrix.png"
HISTORY_PNG = "training_curves.png"
ERRORS_PNG = "errors.png"
SLICE_KEYS = (features.SOURCE, features.VIEW, features.SEX)
SLICE_BOOTSTRAP = 500  # resamples for per-slice AUC CIs (the overall AUC uses --bootstrap)


def _default_folder_map() -> dict[str, str]:
    """Folder name (lower case) -> finding: the finding names and the curation adapters' class folders."""
    mapping = {f: f for f in features.FINDINGS}
    mapping["covid19"] = features.COVID
    mapping.update({k.lower(): v for k, v in radiography.CLASS_FOLDERS.items()})
    mapping.update({k.lower(): v for k, v in kermany.CLASS_FOLDERS.items()})
    return mapping


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalData:
    path: str
    format: str  # "tfrecords" | "folders"
    task_name: Optional[str]  # the task the data was labelled for (summary.json), if known
    images: list  # encoded PNG bytes, one per example
    labels: np.ndarray  # class index in the task's vocabulary
    groups: list  # patient/duplicate group per example
    refs: list  # file path or record reference per example
    slices: dict  # slice key -> value per example (source, view, sex when known)
    serialized: Optional[list] = None  # tf.Examples (TFRecords only)
    skipped: list = dataclasses.field(default_factory=list)  # [{"file", "reason"}]
    hidden: int = 0  # hidden files and folders (".", __MACOSX) not read; counted, not listed
    masks: int = 0  # lung masks in masks/ folders (the radiography layout's) not read; counted, not listed

    @property
    def n(self) -> int:
        return len(self.images)


# A curated directory, or one split of a pipeline run's ExampleGen output (e.g. the held-out
# `<pipeline_root>/ImportExampleGen/examples/<id>/Split-test`).
TFRECORD_PATTERNS = (features.TFRECORD_PATTERN, "data_tfrecord-*.gz")


def _tfrecord_files(path: str) -> list:
    return sorted(f for pattern in TFRECORD_PATTERNS for f in glob.glob(os.path.join(path, pattern)))


def is_tfrecord_dir(path: str) -> bool:
    return bool(_tfrecord_files(path))


def load_tfrecords(data_dir: str) -> EvalData:
    files = _tfrecord_files(data_dir)
    task_name = (_curation_summary(data_dir) or {}).get("task")
    serialized, encoded, labels, groups, refs = [], [], [], [], []
    slices: dict = {k: [] for k in SLICE_KEYS}
    for i, (raw, example) in enumerate(writer.read_examples(files)):
        feats = example.features.feature

        def text(name, default=""):
            values = feats[name].bytes_list.value if name in feats else []
            return values[0].decode("utf-8", "replace") if values else default

        serialized.append(raw)
        encoded.append(feats[features.IMAGE].bytes_list.value[0])
        labels.append(int(feats[features.LABEL_INDEX].int64_list.value[0]))
        groups.append(text(features.GROUP) or text(features.PATIENT_ID) or f"record-{i}")
        refs.append(f"record {i}")
        for key in SLICE_KEYS:
            slices[key].append(text(key, features.UNKNOWN))
    if not serialized:
        raise ValueError(f"no records in {data_dir!r}")
    slices = {k: v for k, v in slices.items() if any(x != features.UNKNOWN for x in v)}
    return EvalData(data_dir, "tfrecords", task_name, encoded, np.asarray(labels, np.int64), groups, refs,
                    slices, serialized=serialized)


def _printable(text: str) -> str:
    """A path as the report can hold it: a folder name that is not UTF-8 gets replacement marks."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


NESTED_CLASS_FOLDERS = -2  # _finding_of's depth when mapped folders inside each other disagree


def _finding_of(rel_dirs: Sequence[str], class_map: Optional[Mapping[str, str]]) -> tuple[Optional[str], int]:
    """(finding, depth of the class folder) from the mapped ancestor folders (the outermost one's
    depth); (None, -1) when there is none, (None, NESTED_CLASS_FOLDERS) when they name different
    findings (COVID/<patient>/NORMAL/...: no label to trust)."""
    default = _default_folder_map()
    found = []
    for depth in range(len(rel_dirs) - 1, -1, -1):
        name = rel_dirs[depth]
        if class_map is not None:
            finding = mapped_finding(class_map, name)
        else:
            finding = default.get(name.lower())
        if finding:
            found.append((finding, depth))
    if not found:
        return None, -1
    if len({finding for finding, _ in found}) > 1:
        return None, NESTED_CLASS_FOLDERS
    return found[-1]  # the outermost: COVID/<patient>/COVID/x.png keeps no folder below it


def _folder_source(key: bytes, folder: str) -> str:
    """The source slice of the films under a top folder above the class folders (a site, or a
    patient's name): a keyed pseudonym `covid-cxr locate` resolves, never the folder's name."""
    return pseudonym.folder_pseudonym(key, "folder", folder)


def _lazy_key(given: Optional[str] = None):
    """The user's pseudonym key (``given``, else as `covid-cxr curate` reads it), read on first use: only
    a folder tree needs it."""
    key: list[bytes] = []

    def get() -> bytes:
        if not key:
            key.append(pseudonym.load_key(given)[0])
        return key[0]

    return get


def _curation_summary(data_dir: str) -> Optional[dict]:
    """The summary.json of a curated directory, None when it has none (TFRecords from elsewhere)."""
    path = os.path.join(data_dir, features.SUMMARY)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return jsonfile.load_object(f, path, "curation summary")


def load_folders(root: str, task: features.Task, class_map: Optional[Mapping[str, str]] = None,
                 preparation: Optional[predict.Preparation] = None, key: Optional[str] = None) -> EvalData:
    """The labelled images of a class-per-folder tree; ``key``: the pseudonym key its files are named
    by (default: as `covid-cxr curate` reads it). ValueError (one line) when nothing is usable."""
    preparation = preparation or predict.Preparation()
    root = os.path.normpath(root)
    inputs = predict.find_inputs([root], strict=True)
    if class_map:  # as curation: a mapped folder that no image is in is a typo, not an empty class
        missing = sorted(unmatched_names(
            class_map, {part for path in inputs.files for part in os.path.relpath(path, root).split(os.sep)[:-1]}))
        if missing:
            raise ValueError(f"--class-map names folder(s) {', '.join(missing)} that hold no image under {root!r} "
                             "(exact names, case included, as curation matches them)")
    encoded, labels, groups, refs, sources, skipped = [], [], [], [], [], []
    key = _lazy_key(key)
    passed_over = {e.file: e.error for e in inputs.skipped}  # not images, named pipes: never opened
    masks = 0
    for path in inputs.files + list(passed_over):
        rel = os.path.relpath(path, root)
        parts = rel.split(os.sep)
        if path not in passed_over and radiography.not_a_film("/".join(parts)):
            masks += 1  # as curation: counted, not read (COVID/masks/x.png is no COVID film)
            continue
        finding, depth = _finding_of(parts[:-1], class_map)
        # A folder tree may be a hospital export, whose folders above the class folder too may be
        # named by patient: every file is reported as <root>/<class folder>/file-<pseudonym>.<ext>
        # (images.public_ref), as curation's folder source writes it; `covid-cxr locate --source
        # folder=<root>` finds it again.
        ref = "/".join(parts)
        token = f"file-{pseudonym.file_pseudonym(key(), 'folder', ref)}"
        shown = _printable(os.path.join(root, images.public_ref("/".join(parts[depth:]), token, keep=1) if depth >= 0
                                        else images.public_ref(ref, token, keep=0)))
        if path in passed_over:
            skipped.append({"file": shown, "reason": passed_over[path]})
            continue
        if finding is None:
            skipped.append({"file": shown, "reason": "in class folders inside each other that name different findings"
                            if depth == NESTED_CLASS_FOLDERS else "not in a mapped class folder"})
            continue
        cls = task.class_of(finding)
        if cls is None:
            skipped.append({"file": shown, "reason": f"finding {finding} is not used by task {task.name}"})
            continue
        try:
            processed = predict.process(path, preparation)
        except images.ImageError as e:
            skipped.append({"file": shown, "reason": f"unreadable image: {e}"})
            continue
        refusal = processed.header.refusal() if processed.header is not None else None
        if refusal:  # as curation: the model was never meant to see it
            skipped.append({"file": shown, "reason": refusal})
            continue
        encoded.append(processed.png)
        labels.append(task.classes.index(cls))
        patient = processed.header.patient_id if processed.header is not None else ""
        if patient:  # a raw DICOM PatientID never leaves this function
            groups.append("dicom:" + pseudonym.pseudonymize(key(), "folder", patient))
        else:
            groups.append(os.path.join(os.path.dirname(rel), kermany.patient_id_of(path)))
        refs.append(shown)
        sources.append(_folder_source(key(), parts[0]) if depth > 0 else _printable(os.path.basename(root)))
    if not encoded:
        passed_over = html_report.passed_over_text(len(skipped), inputs.hidden, masks, zero_skipped=True)
        raise ValueError(f"no usable labelled images under {root!r} for task {task.name} "
                         f"({passed_over}; class folders must be named like "
                         f"{', '.join(sorted(set(task.classes)))} or given with --class-map)")
    slices = {features.SOURCE: sources} if len(set(sources)) > 1 else {}
    # Hidden files are counted, not listed: one row per macOS ._ file would bury the real ones.
    return EvalData(root, "folders", None, encoded, np.asarray(labels, np.int64), groups, refs, slices,
                    skipped=skipped, hidden=inputs.hidden, masks=masks)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Evaluation:
    report: dict
    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    covid: np.ndarray
    task: features.Task
    history: Optional[dict] = None
    images: Optional[list] = None  # the encoded images, by index (for the gallery of misclassified films)


def _scalar(entry) -> Optional[float]:
    return entry.get("value") if isinstance(entry, dict) else entry


def binary_block(y_pos: np.ndarray, pred_pos: np.ndarray, scores: np.ndarray, n_boot: int, seed: int) -> dict:
    """COVID-vs-rest metrics at the model's decision, with CIs."""
    counts = metrics.binary_counts(y_pos, pred_pos)
    block = metrics.binary_metrics_from_counts(**counts)
    block["auc"] = metrics.auc_with_ci(y_pos, scores, n_boot=n_boot, seed=seed)
    block["f1"] = metrics.f1_from_counts(counts["tp"], counts["fp"], counts["fn"])
    return block


def _slice_metrics(task, y, y_pred, covid, mask, n_boot, seed) -> dict:
    pos = task.positive_index
    yy, pp, ss = y[mask], y_pred[mask], covid[mask]
    block = binary_block(yy == pos, pp == pos, ss, n_boot, seed)
    return {
        "n": int(mask.sum()),
        "class_counts": {task.classes[i]: int((yy == i).sum()) for i in range(task.num_classes)},
        "sensitivity": block["sensitivity"],
        "specificity": block["specificity"],
        "precision": block["precision"],
        "accuracy": metrics.proportion(int((yy == pp).sum()), int(mask.sum())),
        "auc": block["auc"],
    }


def compute(task: features.Task, labels: np.ndarray, outputs: Mapping, n_boot: int = 2000, seed: int = 0,
            slices: Optional[Mapping[str, Sequence[str]]] = None, groups: Optional[Sequence[str]] = None) -> dict:
    """The metrics part of the report from labels and the model's signature outputs. With patient
    ``groups`` of which some hold several films, also the intervals of resampling patients."""
    y = np.asarray(labels, np.int64)
    y_pred = np.asarray(outputs["label_index"], np.int64)
    probabilities = np.asarray(outputs["probabilities"], np.float64)
    covid = np.asarray(outputs["covid_probability"], np.float64)
    pos = task.positive_index
    cm = metrics.confusion_matrix(y, y_pred, task.num_classes)
    block = binary_block(y == pos, y_pred == pos, covid, n_boot, seed)
    out = {
        "n": int(y.size),
        "class_counts": {task.classes[i]: int((y == i).sum()) for i in range(task.num_classes)},
        "positive_class": features.COVID,
        "sensitivity": block["sensitivity"],
        "specificity": block["specificity"],
        "precision": block["precision"],
        "npv": block["npv"],
        "accuracy": metrics.proportion(int(np.trace(cm)), int(cm.sum())),
        "auc": block["auc"],
        "f1": block["f1"],
        "counts": block["counts"],
        "confusion_matrix": {"classes": list(task.classes), "rows": "true class", "columns": "predicted class",
                             "matrix": cm.tolist()},
    }
    atypical = outputs.get(typicality.ATYPICAL_OUTPUT)  # absent for models exported before the check
    if atypical is not None:
        atypical = np.asarray(atypical, bool)
        out["atypical"] = metrics.proportion(int(atypical.sum()), int(atypical.size))
    if groups is not None and len(set(groups)) < y.size:
        out["patient_bootstrap"] = metrics.patient_bootstrap(y == pos, y_pred == pos, covid, groups,
                                                             correct=y == y_pred, n_boot=n_boot, seed=seed)
    if not task.is_binary:
        per_class = metrics.per_class_metrics(cm, task.classes, probabilities, y, n_boot=n_boot, seed=seed)
        aucs = [_scalar(per_class[c]["auc"]) for c in task.classes]
        out["multiclass"] = {
            "macro_f1": metrics.macro_f1(cm),
            "absent_classes": metrics.absent_classes(cm, task.classes),
            "macro_auc": float(np.mean(aucs)) if all(a is not None for a in aucs) else None,
            "per_class": per_class,
            "covid_one_vs_rest": block,
        }
    if slices:
        out["per_source"] = {}
        out["slices"] = {}
        for key, values in slices.items():
            values = np.asarray(values)
            table = {v: _slice_metrics(task, y, y_pred, covid, values == v, SLICE_BOOTSTRAP, seed)
                     for v in sorted(set(values.tolist()))}
            if atypical is not None:
                for v, entry in table.items():
                    entry["atypical"] = int(atypical[values == v].sum())
            if key == features.SOURCE:
                out["per_source"] = table
                out["sources_below_pooled_auc"] = metrics.sources_below_pooled_auc(out["auc"], table)
            else:
                out["slices"][key] = table
        if not out["slices"]:
            out.pop("slices")
    return out


def trainer_model_uri(model: predict.ServingModel) -> Optional[str]:
    """The Trainer Model artifact this model came from: its push record's, or its own directory's."""
    return model.push_record.get("model_uri") or predict.trainer_artifact(model.path)


def find_history(model: predict.ServingModel, pipeline_root: Optional[str] = None) -> tuple[Optional[dict], str]:
    """(training history, where it came from) -- metadata asset, Trainer model_run, or pipeline root."""
    if model.metadata.get("history"):
        return model.metadata["history"], "model metadata asset (assets/covid_cxr.json)"
    candidates = []
    uri = trainer_model_uri(model)
    if uri:  # <root>/Trainer/model/<id> -> <root>/Trainer/model_run/<id>/history.json
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(uri)), "model_run", os.path.basename(uri)))
    for directory in candidates:
        path = os.path.join(directory, artifacts.HISTORY_FILE)
        if os.path.isfile(path):
            return artifacts.read_history(path)
    if pipeline_root and artifacts.under_root(uri or "", pipeline_root) is not False:  # not another root's model's
        found = artifacts.newest_history(pipeline_root)
        if found:
            return found[0], found[1] + " (newest Trainer run under the pipeline root)"
    return None, "not found"


def task_of(model: predict.ServingModel, data: EvalData) -> features.Task:
    """The task whose classes `data`'s labels index; click.UsageError when model and data disagree."""
    task = model.task or features.TASKS.get(data.task_name or "")
    if task is None:
        raise click.UsageError("the model's metadata names no task and the data has none: cannot tell the classes")
    if data.task_name and data.task_name != task.name:
        raise click.UsageError(f"{data.path!r} was curated for task {data.task_name!r} but the model is for "
                               f"{task.name!r}: label indices would not mean the same classes")
    if data.labels.size and (data.labels.min() < 0 or data.labels.max() >= task.num_classes):
        raise click.UsageError(f"labels in {data.path!r} are outside 0..{task.num_classes - 1} of task {task.name}")
    return task


def evaluate(model: predict.ServingModel, data: EvalData, n_boot: int = 2000, seed: int = 0,
             audit: bool = True, attention: bool = False, progress=None,
             attention_limit: Optional[int] = None) -> Evaluation:
    """Runs the model on `data` and computes the report (without plots or pipeline artifacts).
    `attention`: add the attention audit (a heat map per film, about a second each on a CPU;
    `progress` gets a line every 50 films), on `attention_limit` films of each true class (spread over
    the data) when given (the other figures use every film)."""
    task = task_of(model, data)
    if data.serialized is not None:
        outputs = model.predict_examples(data.serialized)
        signature = predict.EXAMPLES_SIGNATURE
    else:
        outputs = model.predict_images(data.images)
        signature = predict.IMAGE_SIGNATURE
    threshold = model.threshold if model.threshold is not None else float(outputs["threshold"][0])
    report = {
        "task": task.name,
        "classes": list(task.classes),
        "model": {"path": model.path, "version": model.version, "family": model.metadata.get("family"),
                  "signature": signature},
        "data": {"path": data.path, "format": data.format, "n": data.n, "skipped": len(data.skipped),
                 "skipped_files": data.skipped, "hidden_skipped": data.hidden,
                 "masks_skipped": data.masks},
        "threshold": threshold,
    }
    # One rule for the flag and the note: an older three-class model labels by argmax (its graph's threshold
    # decides nothing); one whose metadata names the rule, by the threshold its graph outputs if none is stored.
    evaluated_metadata = model_metadata.completed(model.metadata, report)
    by_threshold = model_metadata.threshold_applies(evaluated_metadata)
    report["threshold_applies"] = by_threshold
    report["threshold_note"] = model_metadata.decision_note(evaluated_metadata)
    report.update(compute(task, data.labels, outputs, n_boot=n_boot, seed=seed, slices=data.slices, groups=data.groups))
    # Reporting only: near copies of training/validation films stay in the figures.
    report["near_copies"] = near_copies.check(model.metadata, data.images, data.refs)
    # Only the curation's keyed pseudonyms are shown; a folder tree's groups hold its folder names.
    shown_groups = data.groups if data.format == "tfrecords" else None
    report["errors"] = errors.misclassified(task, data.labels, outputs["label_index"], outputs["probabilities"],
                                            shown_groups, data.refs, data.slices,
                                            threshold=threshold if by_threshold else None)
    if audit:
        report["shortcut_audit"] = shortcut_audit.audit(data.images, data.labels == task.positive_index,
                                                        data.groups, seed=seed)
    if attention:
        report["attention_audit"] = attention_audit.audit_model(
            model, data.images, data.labels, outputs["label_index"], task.classes,
            sources=data.slices.get(features.SOURCE), progress=progress, limit=attention_limit)
    return Evaluation(report, data.labels, np.asarray(outputs["label_index"]), np.asarray(outputs["probabilities"]),
                      np.asarray(outputs["covid_probability"]), task, images=data.images)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def json_safe(value):
    """NaN/inf (e.g. a TFMA metric of an empty slice) -> None, numpy scalars -> Python: strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def make_plots(evaluation: Evaluation) -> dict[str, bytes]:
    """{file name: PNG bytes}: ROC, confusion matrix and, when there are any, the misclassified films'
    gallery and the training curves."""
    from covid_cxr.evaluation import plots

    task, report = evaluation.task, evaluation.report
    pos = task.positive_index
    curves = [(f"{features.COVID} vs rest" if not task.is_binary else f"{task.classes[pos]} vs {task.classes[1 - pos]}",
               evaluation.labels == pos, evaluation.covid)]
    if not task.is_binary:
        curves += [(f"{name} vs rest", evaluation.labels == i, evaluation.probabilities[:, i])
                   for i, name in enumerate(task.classes) if i != pos]
    sens, spec = report["sensitivity"]["value"], report["specificity"]["value"]
    point = (1.0 - spec, sens) if sens is not None and spec is not None else None
    out = {
        ROC_PNG: plots.roc_png(curves, point, title=f"ROC, {task.name} (n={report['n']})",
                               point_label=plots.STORED_THRESHOLD if html_report.decided_by_threshold(report)
                               else plots.ARGMAX_DECISION),
        CONFUSION_PNG: plots.confusion_png(np.asarray(report["confusion_matrix"]["matrix"]), task.classes),
    }
    if evaluation.images is not None and report.get("errors"):
        wrong = report["errors"]
        png = errors.gallery_png(evaluation.images, wrong["listed"],
                                 title=f"Misclassified: {min(len(wrong['listed']), errors.MAX_GALLERY)} of "
                                       f"{wrong['n']}, most confidently wrong first")
        if png:
            out[ERRORS_PNG] = png
    if evaluation.history:
        png = plots.history_png(evaluation.history)
        if png:
            out[HISTORY_PNG] = png
    return out


def gate_decision(model: predict.ServingModel) -> tuple[dict, Optional[str]]:
    """(record, its path) of the gate's decision on this model: the push record of a pushed version
    (only blessed models are pushed), else the decision record the run's Pusher wrote for its Trainer
    artifact (blessed or not: the failures too); ({}, None) when neither is on file."""
    record = model.push_record
    if record.get("metrics"):
        return dict(record, blessed=True), os.path.join(model.path, predict.PUSH_RECORD)
    uri = trainer_model_uri(model)
    if uri:
        found = artifacts.gate_decision(uri)
        if found:
            return found
    return {}, None


def run_decision(model: predict.ServingModel, decision: Mapping,
                 decision_path: Optional[str]) -> Optional[tuple[Mapping, str]]:
    """The run's decision record on ``model`` ((record, path), from :func:`gate_decision`) when that is what
    speaks for it, else None: a model loaded from a serving directory's version carries its own record (the
    gate blessed it; its version says so), and a model with no record on file has none."""
    if model.version is not None or not decision_path:
        return None
    return decision, decision_path


def model_card_text(model: predict.ServingModel, report: dict, record: Mapping) -> str:
    """The card the Pusher wrote for this model (its gate and held-out figures, from the gate's
    decision ``record`` (:func:`gate_decision`) when there is one: a refused model's says so, and
    why), plus this evaluation's intervals, per-source table and audit."""
    metadata = dict(model_metadata.completed(model.metadata, report),
                    **({"gate": record["gate"]} if record.get("gate") else {}))
    gate = None
    if record.get("metrics"):
        from covid_cxr.evaluation import gate_report

        gate = gate_report.GateReport(blessed=bool(record["blessed"]), metrics=record["metrics"],
                                      failures=list(record.get("failures") or []), slices={})
    return model_card.render(metadata, gate, json_safe(report))


def write_report(evaluation: Evaluation, out_dir: str, pipeline: Optional[dict] = None,
                 model: Optional[predict.ServingModel] = None, decision: Optional[Mapping] = None) -> dict:
    """Writes the PNGs, report.json and report.html into out_dir; returns {kind: path}.
    With the evaluated ``model`` also its model card with this evaluation and the gate's ``decision``
    record (:func:`model_card_text`)."""
    os.makedirs(out_dir, exist_ok=True)
    pngs = make_plots(evaluation)
    for name in (ERRORS_PNG, HISTORY_PNG):  # a plot this evaluation has not: not an earlier report's in its place
        if name not in pngs and os.path.lexists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    files = {}
    for name, data in pngs.items():
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        files[name] = path
    files[REPORT_HTML] = os.path.join(out_dir, REPORT_HTML)
    files[REPORT_JSON] = os.path.join(out_dir, REPORT_JSON)
    if model is not None:
        files[model_card.FILE_NAME] = os.path.join(out_dir, model_card.FILE_NAME)
    evaluation.report["files"] = files
    with open(files[REPORT_HTML], "w", encoding="utf-8") as f:
        f.write(html_report.render(evaluation.report, pngs, pipeline))
    if model is not None:
        with open(files[model_card.FILE_NAME], "w", encoding="utf-8") as f:
            f.write(model_card_text(model, evaluation.report, decision or {}))
    with open(files[REPORT_JSON], "w", encoding="utf-8") as f:
        json.dump(json_safe(evaluation.report), f, indent=2, allow_nan=False)
    return files


# --------------------------------------------------------------------------------------------
# Terminal
# --------------------------------------------------------------------------------------------


def _fmt(entry) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95")
    text = f"{entry['value']:.3f}"
    if ci:
        text += f"  [{ci[0]:.3f}, {ci[1]:.3f}]"
    if "k" in entry:
        text += f"  ({entry['k']}/{entry['n']})"
    return text


def gate_decision_text(decision: Mapping) -> str:
    """One line: what the run's gate decided on an unpushed model, and where that is recorded."""
    verdict = "BLESSED" if decision["blessed"] else "NOT BLESSED"
    failures = "; ".join(decision["failures"])
    return f"the run's gate decided {verdict}{': ' + failures if failures else ''} ({decision['record']})"


def summary_text(report: dict) -> str:
    model = report["model"]
    lines = [
        f"task {report['task']}; model {model['path']} ({html_report.approval_text(model)})",
        # A blessed one is the header's (approval_text).
        *([gate_decision_text(model["gate_decision"])]
          if model.get("gate_decision") and not model["gate_decision"]["blessed"] else []),
        f"data {report['data']['path']} ({report['data']['format']}, n={report['n']}: "
        + ", ".join(f"{k} {v}" for k, v in report["class_counts"].items())
        + html_report.skipped_text(report["data"]) + ")",
        *(["each skipped file is listed with its reason in report.json (data.skipped_files)"]
          if report["data"]["skipped"] else []),
        *([f"WARNING: {report['data']['warning']}"] if report["data"].get("warning") else []),
        *[line for line in [near_copies.summary_line(report.get("near_copies"))] if line],
        " ".join(html_report.decision_text(report)),
        "metric        value  [95% CI]  (k/n)",
    ]
    for name in ("sensitivity", "specificity", "precision", "accuracy", "auc"):
        lines.append(f"  {name:<12}{_fmt(report[name])}")
    if "multiclass" in report:
        absent = metrics.absent_classes_text(report["multiclass"].get("absent_classes"))
        lines.append(f"  {'macro-F1':<12}{report['multiclass']['macro_f1']:.3f}" + (f"  ({absent})" if absent else ""))
    if report.get("patient_bootstrap"):
        lines.append(metrics.patient_ci_text(report["patient_bootstrap"]))
    if report.get("atypical"):
        lines.append(typicality.rate_text(report["atypical"]))
    cm = report["confusion_matrix"]
    width = max(len(c) for c in cm["classes"]) + 2
    lines.append("confusion matrix (rows true, columns predicted):")
    lines.append(" " * (width + 2) + "".join(f"{c:>{width}}" for c in cm["classes"]))
    for c, row in zip(cm["classes"], cm["matrix"]):
        lines.append(f"  {c:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    for source, entry in report.get("per_source", {}).items():
        lines.append(f"  source {source}: n={entry['n']} sensitivity {_fmt(entry['sensitivity'])}; "
                     f"specificity {_fmt(entry['specificity'])}; AUC within the source {_fmt(entry.get('auc'))}"
                     + (f"; atypical {entry['atypical']}" if "atypical" in entry else ""))
    if report.get("sources_below_pooled_auc"):
        lines.append("WARNING: " + metrics.within_source_warning(report["sources_below_pooled_auc"]))
    wrong = report.get("errors")
    if wrong and wrong["n"]:
        worst = "; ".join(f"{e['ref']} {e['true']} -> {e['predicted']} ({errors.odds(e)})"
                          for e in wrong["listed"][:3])
        lines.append(f"misclassified: {wrong['n']}; most confidently wrong: {worst}")
    audit = report.get("shortcut_audit")
    if audit:
        lines.append(f"shortcut audit: {audit['verdict']}")
    attention = report.get("attention_audit")
    if attention:
        lines.append(f"attention audit (heat maps by {attention_audit.method_text(attention)}), "
                     + "\n".join(attention_audit.summary_lines(attention)))
    if report.get("files"):
        lines.append(f"report: {report['files'][REPORT_HTML]}")
        if model_card.FILE_NAME in report["files"]:
            lines.append(f"model card with this evaluation: {report['files'][model_card.FILE_NAME]}")
    return "\n".join(lines)


@contextlib.contextmanager
def one_line_errors(program: str):
    """For the scripts: an unreadable model, split or output path ends `program` with one line
    naming the problem, not a traceback."""
    try:
        yield
    except (ValueError, OSError, click.ClickException) as e:
        message = e.format_message() if isinstance(e, click.ClickException) else str(e)
        raise SystemExit(f"{program}: {message}") from None


def held_out_split(pipeline_root: Optional[str]) -> str:
    """The newest ExampleGen `Split-test` under a pipeline root: data no training step has seen."""
    if not pipeline_root:
        raise click.UsageError("pass --data DIR, or --pipeline-root DIR to evaluate on that run's test split")
    examples = artifacts.newest_execution(pipeline_root, "ImportExampleGen", "examples")
    if examples is None or not os.path.isdir(os.path.join(examples, "Split-test")):
        raise click.BadParameter(f"no ImportExampleGen test split under {pipeline_root!r}", param_hint="--pipeline-root")
    return os.path.join(examples, "Split-test")


def training_data_warning(model: predict.ServingModel, data_dir: str) -> Optional[str]:
    """A warning when `data_dir` is the very curated dataset the model was trained from.

    A curated directory holds every split; the figures on it mix in training and validation images
    and overstate the model. The pipeline's held-out split is ExampleGen's `Split-test`.
    """
    trained_on = (model.metadata or {}).get("data_summary") or {}
    summary = _curation_summary(data_dir)
    if not trained_on or summary is None:
        return None
    keys = ("task", "accepted", "per_source_class")
    if any(summary.get(k) != trained_on.get(k) for k in keys):
        return None
    return ("this is the curated dataset the model was trained on (all splits, training images included): the "
            "figures overstate it; for held-out figures pass <pipeline_root>/ImportExampleGen/examples/<id>/Split-test")


def check_out_beside_model(out_dir: str, model_dir: str) -> None:
    """The report goes beside the model, not into it (its model_card.md is the pushed card, which the
    evaluation's would replace) nor into its serving directory or a folder there (another version's card;
    TF Serving's version folders only), nor into the Trainer model artifact whose Format-Serving it is
    (a TFX artifact: ML Metadata's record of a run's output, not a folder for reports)."""
    out, model = os.path.realpath(out_dir), os.path.realpath(model_dir)
    serving = os.path.dirname(model) if os.path.basename(model).isdigit() else None
    artifact = predict.trainer_artifact(model_dir)  # by name: a Format-Serving linked elsewhere still has one
    artifact = os.path.realpath(artifact) if artifact else None

    def within(folder: Optional[str]) -> bool:
        return bool(folder) and (out == folder or out.startswith(folder + os.sep))

    why = "the report would overwrite a model_card.md or sit among TF Serving's versions"
    if within(serving):  # another version's folder too
        where = "its serving directory" if out == serving else "inside its serving directory"
    elif within(model):
        where = "the model's own folder"
    elif within(artifact):  # beside Format-Serving
        where = "its Trainer model artifact" if out == artifact else "inside its Trainer model artifact"
        why = "the report would be written into a TFX artifact"
    else:
        return
    raise click.BadParameter(f"{out_dir!r} is {where}: {why}; choose another folder", param_hint="--out")


@click.command("evaluate")
@click.option("--model", "model_path", required=True, type=UserPath(),
              help="Pushed version dir, serving base dir (newest version) or exported SavedModel.")
@click.option("--data", "data_dir", default=None, type=UserPath(),
              help="Curated TFRecords dir (records-*.tfrecord.gz), a run's Split-test dir, or a class-per-folder "
                   "image tree. Default with --pipeline-root: that run's held-out test split.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", "out_dir", type=UserPath(file_okay=False), default="evaluation-report", show_default=True,
              help="Where report.html, report.json and the PNG plots are written.")
@click.option("--pipeline-root", default=None, type=UserPath(),
              help="Add the newest TFDV statistics/anomalies and TFMA slice metrics found under this root.")
@click.option("--class-map", default=None, metavar="FOLDER=FINDING,...",
              help="Folder trees only: class folder (exact name, as curate) -> finding (replaces the default names).")
@click.option("--bootstrap", "n_boot", default=2000, show_default=True, type=click.IntRange(100, 100000),
              help="Bootstrap resamples for the AUC confidence interval.")
@click.option("--no-audit", is_flag=True, help="Skip the border-only shortcut audit.")
@click.option("--attention", is_flag=True,
              help="Add the attention audit: how much of each film's heat map (as predict --explain draws it) lies "
                   "in the outer band, per true class, source and predicted class (about a second per film).")
@click.option("--attention-limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --attention: audit only N films of each true class, spread evenly over the data, a quicker "
                   "look (the other figures use every film).")
@predict.max_side_option("Folder trees only: ")
@click.option("--equalize", "equalization", type=click.Choice(images.EQUALIZE_MODES), default=None,
              help="Folder trees only: equalization as in curation (default: the model metadata's, else none).")
@pseudonym.key_option
def evaluate_command(model_path, data_dir, as_json, out_dir, pipeline_root, class_map, n_boot, no_audit,
                     attention, attention_limit, max_side, equalization, key):
    """Measure a model on labelled data: sensitivity, specificity, AUC ... with 95% CIs, a border
    shortcut audit and an HTML report."""
    if attention_limit is not None and not attention:  # not ignored: the user wanted a quick attention audit
        raise click.BadParameter("applies to the attention audit: add --attention", param_hint="--attention-limit")
    if out_dir:  # before the work, not when the report is written
        writer.check_writable(out_dir, "--out")
    if pipeline_root:  # before the work too: found after it, the evaluation was lost
        try:
            artifacts.check_pipeline_root(pipeline_root)
        except FileNotFoundError as e:
            raise click.BadParameter(str(e), param_hint="--pipeline-root")
    if data_dir is None:
        data_dir = held_out_split(pipeline_root)
    if not os.path.isdir(data_dir):
        raise click.BadParameter(f"{data_dir!r} is not a directory", param_hint="--data")
    # The class map too, before the load (a minute on a busy machine): a typo in it is no reason to wait.
    records = is_tfrecord_dir(data_dir)
    # What maps, prepares and names a folder tree's files: curated records are all that already, so on them
    # these options would be ignored without a word (a short --key too).
    tree_only = {"--class-map": class_map, "--max-side": max_side, "--equalize": equalization, "--key": key}
    given = [flag for flag, value in tree_only.items() if value is not None]
    if records and given:
        raise click.BadParameter(f"{given[0]} applies to folder trees, not to TFRecords", param_hint=given[0])
    try:
        mapping = parse_class_map(class_map) if class_map is not None and not records else None  # "" is an error
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--class-map")
    if out_dir:  # on the directory the load will pick, before the load
        check_out_beside_model(out_dir, predict.saved_model_dir(model_path))
    model = predict.load_model(model_path)
    # The decision, read once for the warning, the summary and the model card; a damaged record stops here,
    # before the work.
    decision, decision_path = gate_decision(model)
    from_run = run_decision(model, decision, decision_path)
    predict.warn_if_unpushed(model, predict.blessed_of(from_run))
    predict.warn_if_synthetic(model)
    warning = None
    if records:
        data = load_tfrecords(data_dir)
        warning = training_data_warning(model, data_dir)
        if warning:
            click.echo(f"covid-cxr: warning: {warning}", err=True)
    else:
        if model.task is None:
            raise click.UsageError("the model's metadata names no task: cannot map class folders")
        preparation = predict.Preparation.from_metadata(model.metadata, max_side, equalization)
        with pseudonym.announcing_new_key_file(key, err=True):  # stderr: --json keeps stdout JSON
            try:
                data = load_folders(data_dir, model.task, mapping, preparation, key)
            except ValueError as e:
                raise click.UsageError(str(e))
    task = task_of(model, data)  # a task mismatch in one line before any label is named by its class
    present = sorted({int(label) for label in data.labels})
    if len(present) == 1:  # as curation warns: a report with half its figures n/a
        click.echo(f"covid-cxr: warning: every film is labelled {task.classes[present[0]]}: sensitivity or "
                   "specificity, and AUC, cannot be measured", err=True)
    evaluation = evaluate(model, data, n_boot=n_boot, audit=not no_audit, attention=attention,
                          progress=lambda line: click.echo(f"covid-cxr: {line}", err=True),
                          attention_limit=attention_limit)
    if warning:
        evaluation.report["data"]["warning"] = warning
    if from_run:
        evaluation.report["model"]["gate_decision"] = {
            "blessed": bool(decision.get("blessed")), "failures": list(decision.get("failures") or []),
            "record": decision_path, "served_as": str(decision.get("pushed_destination") or "")}
    history, history_source = find_history(model, pipeline_root)
    evaluation.history = history
    evaluation.report["training_history"] = {
        "source": history_source,
        "epochs": max((len(v) for v in history.values() if isinstance(v, list)), default=0) if history else 0,
        "members": model.metadata.get("training") or [],  # epochs per phase, weights served (trainer/task.py)
        "member_min_auc": model.metadata.get("member_min_auc"),  # why a member is not served
    }
    pipeline = None
    if pipeline_root:
        try:
            pipeline = artifacts.read_pipeline(pipeline_root, trainer_model_uri(model) or "",
                                               model.push_record.get("evaluation_uri", ""))
        except FileNotFoundError as e:
            raise click.BadParameter(str(e), param_hint="--pipeline-root")
        evaluation.report["pipeline"] = pipeline
    if out_dir:
        write_report(evaluation, out_dir, pipeline, model, decision)
    if as_json:
        click.echo(json.dumps(json_safe(evaluation.report), indent=2, allow_nan=False))
    else:
        click.echo(summary_text(evaluation.report))
