"""`covid-cxr predict`: classify chest radiographs with a pushed (or exported) covid-cxr model.

    covid-cxr predict --model DIR FILE_OR_DIR... [--json] [--explain OUT_DIR]

DIR is a pushed version directory (``<serving_dir>/<version>/``), the serving base directory (its
newest numeric version is used), any exported SavedModel directory, or a Trainer model artifact
(its ``Format-Serving/``). Inputs are PNG, JPEG and DICOM files and directories (searched
recursively for ``.png/.jpg/.jpeg/.dcm/.dicom`` files and extension-less DICOM files).

Every input is prepared exactly as curation prepares it (``covid_cxr.data.images.process``:
DICOM Modality/VOI LUT, MONOCHROME1 inversion, 8-bit grayscale, border crop, max side 512, no
equalization -- or the curation settings recorded in the model's metadata, see ``Preparation``), then
its PNG bytes go through the model's own ``predict_image`` signature, so the SavedModel's Transform
graph does the rest (decode, resize, contrast stretch) exactly as in training.

Unreadable inputs are reported per file with a reason; the exit code is 1 when any input failed
(prediction or explanation), else 0. Inputs are found and prepared before the model loads: when none
is usable, the model is not loaded at all (the same rows, without the half minute a load can take).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from typing import Iterable, Optional, Sequence

import click
import numpy as np

from covid_cxr.data import features, images, writer
from covid_cxr.evaluation import artifacts
from covid_cxr.evaluation.artifacts import PUSH_RECORD
from covid_cxr.messages import first_line
from covid_cxr.pipeline.config import UserPath
from covid_cxr.serving import model_metadata, typicality
# The exported model's signature names, as serving/export.py writes them.
from covid_cxr.serving.export import EXAMPLES_SIGNATURE, IMAGE_SIGNATURE, TRANSFORM_SIGNATURE

BATCH_SIZE = 16

log = logging.getLogger(__name__)


class ModelNotFound(click.BadParameter):
    """--model does not point at a usable SavedModel (exit code 2, one line)."""


# --------------------------------------------------------------------------------------------
# Locating and loading the model
# --------------------------------------------------------------------------------------------


def _is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _numeric_versions(path: str) -> list[int]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and _is_saved_model(os.path.join(path, n)))


def saved_model_dir(path: str) -> str:
    """The SavedModel directory `load_model(path)` loads: `path` itself, a Trainer model artifact's
    Format-Serving, or a serving base dir's newest numeric version. Found on disk, nothing loaded or read:
    a check on it comes before the minute a load can take."""
    if "://" in path:
        raise ModelNotFound(f"{path!r} is not a local directory: predict and evaluate read the model from this "
                            "machine's disk (copy it here first, e.g. gsutil cp -r)", param_hint="--model")
    if not os.path.exists(path):
        raise ModelNotFound(f"{path!r} does not exist", param_hint="--model")
    if _is_saved_model(path):
        return path
    serving = os.path.join(path, "Format-Serving")  # a Trainer model artifact
    if _is_saved_model(serving):
        return serving
    versions = _numeric_versions(path)
    if versions:
        return os.path.join(path, str(versions[-1]))
    raise ModelNotFound(f"{path!r} holds no SavedModel (saved_model.pb) and no numeric version directory",
                        param_hint="--model")


def read_push_record(model_dir: str) -> dict:
    """The pusher's record beside a pushed version ({} when absent, unreadable or not a JSON object)."""
    try:
        with open(os.path.join(model_dir, PUSH_RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def version_of(model_dir: str, record: dict) -> Optional[int]:
    """The version `model_dir` serves as: its folder's number, else its push ``record``'s (a renamed
    export's); None for a Trainer artifact's Format-Serving (the Pusher writes no record there)."""
    name = os.path.basename(os.path.normpath(model_dir))
    if name.isdigit():
        return int(name)
    if name == "Format-Serving":
        return None
    version = record.get("version")
    try:
        return int(version) if version is not None else None
    except (ValueError, TypeError):
        return None


@dataclasses.dataclass
class ServingModel:
    """A loaded covid-cxr SavedModel and what it says about itself."""

    path: str
    version: Optional[int]
    metadata: dict
    classes: tuple[str, ...]
    task: Optional[features.Task]
    threshold: Optional[float]  # None: the label is the argmax (three-class models exported before the rule)
    _loaded: object = dataclasses.field(repr=False, default=None)
    # The Pusher's record beside a pushed version (read_push_record; {} when there is none), read once at load.
    push_record: dict = dataclasses.field(repr=False, default_factory=dict)

    @property
    def task_name(self) -> str:
        return self.task.name if self.task else str(self.metadata.get("task", "unknown"))

    def signature(self, name: str):
        signatures = self._loaded.signatures
        if name not in signatures:
            raise click.ClickException(f"the model at {self.path} has no {name!r} signature "
                                       f"(it has: {', '.join(signatures)}); was it exported by covid-cxr?")
        return signatures[name]

    def _run(self, signature_name: str, argument: str, values: Sequence[bytes]) -> dict:
        import tensorflow as tf

        fn = self.signature(signature_name)
        outputs: dict = {}
        for start in range(0, len(values), BATCH_SIZE):
            batch = fn(**{argument: tf.constant(list(values[start:start + BATCH_SIZE]), dtype=tf.string)})
            for key, value in batch.items():
                outputs.setdefault(key, []).append(value.numpy())
        return {k: np.concatenate(v) for k, v in outputs.items()}

    def predict_images(self, encoded: Sequence[bytes]) -> dict:
        """Outputs of `predict_image` (numpy) for encoded PNG/JPEG images."""
        return self._run(IMAGE_SIGNATURE, "image_bytes", encoded)

    def predict_examples(self, serialized: Sequence[bytes]) -> dict:
        """Outputs of `serving_default` (numpy) for serialized tf.Examples."""
        return self._run(EXAMPLES_SIGNATURE, "examples", serialized)

    def transform_images(self, encoded: Sequence[bytes]) -> np.ndarray:
        """The model's own Transform output `image_xf` [N, S, S, 1] for encoded images."""
        serialized = [_example_for_transform(e) for e in encoded]
        return self._run(TRANSFORM_SIGNATURE, "examples", serialized)["image_xf"]

    def class_names(self, width: int) -> tuple[str, ...]:
        if len(self.classes) == width:
            return self.classes
        return tuple(f"class_{i}" for i in range(width))


def _example_for_transform(encoded: bytes) -> bytes:
    """A tf.Example carrying the image and placeholder values for every other contract feature."""
    record = features.Record(png=encoded, label="", label_index=0, patient_id="predict", group="predict",
                             source="predict")
    return record.to_example().SerializeToString()


def find_model(path: str) -> ServingModel:
    """The model that `path` designates (see saved_model_dir) as its files describe it: its folder, push
    record and metadata, its graph not loaded (no TensorFlow). `predict` prepares its inputs with it
    before the half minute a load can take, and loads none when no input is usable."""
    model_dir = saved_model_dir(path)
    record = read_push_record(model_dir)
    metadata = model_metadata.read(model_dir)
    task = features.TASKS.get(str(metadata.get("task", "")))
    classes = tuple(metadata.get("classes") or (task.classes if task else ()))
    threshold = metadata.get("threshold") if model_metadata.threshold_applies(metadata) else None
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise ModelNotFound(f"{model_metadata.asset_path(model_dir)}: the stored threshold {threshold!r} is not a "
                            "number", param_hint="--model")
    return ServingModel(model_dir, version_of(model_dir, record), metadata, classes, task,
                        float(threshold) if threshold is not None else None, None, record)


def load_model(path: str, found: Optional[ServingModel] = None) -> ServingModel:
    """Loads the SavedModel that `path` designates (see saved_model_dir); ``found``: its find_model, read already."""
    import tensorflow as tf

    model = found or find_model(path)
    try:
        loaded = tf.saved_model.load(model.path)
    except Exception as e:  # noqa: BLE001 - a corrupt model is a user-facing one-liner
        raise ModelNotFound(f"cannot load the SavedModel in {model.path!r}: {first_line(e, with_type=True)}",
                            param_hint="--model")
    if IMAGE_SIGNATURE not in loaded.signatures:
        raise ModelNotFound(f"the SavedModel in {model.path!r} has no {IMAGE_SIGNATURE!r} signature "
                            "(not a covid-cxr export?)", param_hint="--model")
    return dataclasses.replace(model, _loaded=loaded)


def trainer_artifact(model_dir: str) -> Optional[str]:
    """The Trainer model artifact (``<root>/Trainer/model/<id>``) whose ``Format-Serving`` ``model_dir`` is, else None."""
    model_dir = os.path.normpath(model_dir)
    return os.path.dirname(model_dir) if os.path.basename(model_dir) == "Format-Serving" else None


def blessed_record(model: ServingModel) -> tuple[Optional[str], str]:
    """For a Trainer artifact (no push record of its own): (the path of its run's Pusher record of a
    BLESSED gate decision on it, the version folder the Pusher served it as: its push, or the newest
    version when the same model was serving already; "" if none); (None, "") for any other model, or
    none on file. A damaged record counts as none here: evaluate names it."""
    uri = trainer_artifact(model.path) if model.version is None else None
    try:
        found = artifacts.gate_decision(uri) if uri else None
    except ValueError:
        return None, ""
    return blessed_of(found)


def blessed_of(found: Optional[tuple[dict, str]]) -> tuple[Optional[str], str]:
    """:func:`blessed_record` of a decision record already read: (record, path), or None."""
    if not found or not found[0].get("blessed"):
        return None, ""
    return found[1], str(found[0].get("pushed_destination") or "")


def approval_text(version: Optional[int], blessed: Optional[str] = None, served_as: str = "") -> str:
    """How predict and evaluate name a model's approval: its version; for a Trainer artifact the gate
    blessed, that, where it is served (a user given the artifact may not know it was pushed) and the
    record (``blessed``, ``served_as``: :func:`blessed_record`); else that none is on file."""
    if version is None and blessed:
        return (f"{'served as ' + served_as if served_as else 'not pushed'}; the run's gate decided BLESSED "
                f"(record: {blessed})")
    return model_metadata.version_text(version)


def warn_if_unpushed(model: ServingModel, blessed: tuple[Optional[str], str]) -> None:
    """predict and evaluate on a model without a push record (a Trainer artifact, e.g. the one `run` names
    when the gate refused it, or a bare export): the header's version says so, and this warning line on
    stderr makes it hard to miss in a script's log, whatever the output format. Not for a Trainer artifact
    its run's gate blessed (``blessed``: :func:`blessed_record`): the header names that decision."""
    if model.version is None and not blessed[0]:
        log.warning("model %s: %s (a Trainer artifact or a bare export, e.g. a model the gate refused); for "
                    "results to rely on, use a pushed version (<serving_dir>/<version>/)",
                    model.path, model_metadata.version_text(None))


SYNTHETIC = "this model was trained on SYNTHETIC images (the demo): its labels say nothing about radiographs"


def trained_on_synthetic(model: ServingModel) -> bool:
    return bool((model.metadata.get("data_summary") or {}).get("synthetic"))


def warn_if_synthetic(model: ServingModel) -> None:
    """predict and evaluate on the demo's model: a warning line on stderr, whatever the output format (`--json`
    and evaluate's summary said nothing of it; predict's table also says it above its rows)."""
    if trained_on_synthetic(model):
        log.warning("model %s: %s", model.path, SYNTHETIC)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class InputError:
    file: str
    error: str

    def to_dict(self) -> dict:
        return {"file": self.file, "error": self.error}


@dataclasses.dataclass
class Inputs:
    files: list[str]  # to predict: given files as given, walked directories' image files, sorted
    errors: list[InputError]  # given paths that hold nothing to predict
    skipped: list[InputError]  # walked directories' files that are not images (or not regular files): listed, not dropped
    hidden: int = 0  # walked directories' hidden files and folders: counted, as curation does


NOT_AN_IMAGE = "not an image file"


def find_inputs(paths: Iterable[str], strict: bool = False) -> Inputs:
    """The files to predict under ``paths``, and what was passed over and why. A given folder holding one
    that cannot be listed is that input's error, or with ``strict`` a SourceError (evaluate: one labelled
    set, whose figures would lack that folder's films)."""
    from covid_cxr.data.sources.base import SourceError, list_files

    found = Inputs([], [], [])
    for path in paths:
        if os.path.isdir(path):
            hidden: list[str] = []
            irregular: list[tuple[str, str]] = []
            try:
                files = list_files(path, hidden=hidden, irregular=irregular)
            except SourceError as e:  # a folder in it cannot be listed: this input's row, not the whole command
                if strict:
                    raise
                found.errors.append(InputError(path, str(e)))
                continue
            found.hidden += len(hidden)
            images_here = [f for f in files if images.is_image_file(f)]
            found.skipped += [InputError(f, NOT_AN_IMAGE) for f in files if not images.is_image_file(f)]
            found.skipped += [InputError(f, reason) for f, reason in irregular]  # a named pipe: never opened
            if not images_here:
                found.errors.append(InputError(path, "no image files (PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM) in this directory"))
            found.files += images_here
        elif os.path.isfile(path):
            found.files.append(path)
        else:
            found.errors.append(InputError(path, images.not_regular(path) or "no such file or directory"))
    return found


@dataclasses.dataclass(frozen=True)
class Preparation:
    """How inputs are turned into the PNG the model gets: curation's settings (data/images.process)."""

    max_side: int = images.DEFAULT_MAX_SIDE
    crop: bool = True
    equalization: str = "none"

    @classmethod
    def from_metadata(cls, metadata: dict, max_side: Optional[int] = None, equalization: Optional[str] = None
                      ) -> "Preparation":
        """Explicit values first, then the curation settings the model's metadata carries, then defaults.

        Looked up in ``metadata["curation"]`` or ``metadata["data_summary"]["settings"]`` (the curated
        summary.json), keys ``max_side``, ``crop``, ``equalize``.
        """
        settings = dict((metadata.get("data_summary") or {}).get("settings") or {})
        settings.update(metadata.get("curation") or {})
        side = max_side or settings.get("max_side") or images.DEFAULT_MAX_SIDE
        equalization = str(equalization or settings.get("equalize") or settings.get("equalization") or "none")
        if not str(side).isdigit() or int(side) < images.MIN_SIDE or equalization not in images.EQUALIZE_MODES:
            # A hand-edited asset: every image would otherwise fail with an unrelated-looking error.
            raise ValueError(f"the model's metadata records curation settings that cannot be repeated "
                             f"(max_side {side!r}, equalize {equalization!r})")
        return cls(max_side=int(side), crop=bool(settings.get("crop", True)), equalization=equalization)


def max_side_option(scope: str = ""):
    """``--max-side`` of predict and evaluate (``scope``: the help's prefix): curation's bounds."""
    return click.option("--max-side", default=None, type=click.IntRange(images.MIN_SIDE, images.MAX_SIDE),
                        help=f"{scope + 'longest' if scope else 'Longest'} side after cropping, as in curation "
                             f"(default: the model metadata's, else {images.DEFAULT_MAX_SIDE}).")


def process(path: str, preparation: Preparation = Preparation()) -> images.Processed:
    """One input file -> what curation makes of it. Raises images.ImageError with curation's reason
    for any failure (``images.process_job``: a decoder's crash or running out of memory included)."""
    processed, reason = images.process_job((path, preparation.max_side, preparation.crop, preparation.equalization))
    if processed is None:
        raise images.ImageError(reason)
    return processed


def prepare(path: str, preparation: Preparation = Preparation()) -> bytes:
    """One input file -> the PNG bytes curation would have stored. Raises images.ImageError, also for
    a DICOM that curation would refuse (another modality or body part, a lateral view): the model never saw one."""
    processed = process(path, preparation)
    refusal = processed.header.refusal() if processed.header is not None else None
    if refusal:
        raise images.ImageError(f"refused as curation refuses it: {refusal}")
    return processed.png


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def rows_from_outputs(model: ServingModel, files: Sequence[str], outputs: dict) -> list[dict]:
    """One JSON-ready prediction per file from signature outputs."""
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
    names = model.class_names(probabilities.shape[1])
    rows = []
    for i, file in enumerate(files):
        label = outputs["label"][i]
        rows.append({
            "file": file,
            "label": label.decode("utf-8") if isinstance(label, bytes) else str(label),
            "label_index": int(outputs["label_index"][i]),
            "probabilities": {name: float(probabilities[i, j]) for j, name in enumerate(names)},
            "covid_probability": float(outputs["covid_probability"][i]),
            "threshold": float(outputs["threshold"][i]),
            "model_version": model.version,
        })
        if typicality.ATYPICALITY_OUTPUT in outputs:  # models exported before the check have none
            rows[-1]["atypicality"] = float(outputs[typicality.ATYPICALITY_OUTPUT][i])
            rows[-1]["atypical"] = bool(outputs[typicality.ATYPICAL_OUTPUT][i])
    return rows


def predict_pngs(model: ServingModel, files: Sequence[str], pngs: Sequence[bytes]) -> tuple[list[dict], list[InputError]]:
    """Predicts in batches; when a batch fails inside TensorFlow, retries its images one by one."""
    import tensorflow as tf

    rows: list[dict] = []
    errors: list[InputError] = []
    for start in range(0, len(files), BATCH_SIZE):
        batch_files, batch_pngs = files[start:start + BATCH_SIZE], pngs[start:start + BATCH_SIZE]
        try:
            rows += rows_from_outputs(model, batch_files, model.predict_images(batch_pngs))
            continue
        except tf.errors.OpError:
            pass
        for file, png in zip(batch_files, batch_pngs):
            try:
                rows += rows_from_outputs(model, [file], model.predict_images([png]))
            except tf.errors.OpError as e:
                errors.append(InputError(file, model_error(e)))
    return rows, errors


def model_error(e) -> str:
    """A film's error when the model failed on it: the served graph's own refusal when it gave one
    (serving/export.py served_images: "image <i>: <reason>"; e.g. a film curation kept that its resize
    left under 32 pixels on a side), else only the error's type (TensorFlow's text names graph nodes)."""
    refusal = re.search(r"assertion failed: \[image \d+: (.*?)\]", getattr(e, "message", "") or "")
    return f"the model refused it: {refusal.group(1)}" if refusal else f"the model could not process it ({type(e).__name__})"


@dataclasses.dataclass
class PredictResult:
    model: ServingModel
    predictions: list[dict]
    errors: list[InputError]
    skipped: list[InputError] = dataclasses.field(default_factory=list)
    hidden: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def decision(self) -> tuple[bool, Optional[float]]:
        """Whether the labels follow a COVID threshold, and which: the stored one, else the one the graph
        output (None when no film was scored). As evaluate decides it (model_metadata.completed): a
        three-class model naming the threshold rule without storing a threshold still applies its graph's."""
        served = {"task": self.model.task.name if self.model.task else None,
                  "classes": list(self.predictions[0]["probabilities"]) if self.predictions else list(self.model.classes),
                  "threshold": self.predictions[0]["threshold"] if self.predictions else None}
        metadata = model_metadata.completed(self.model.metadata, served)
        if not model_metadata.threshold_applies(metadata):
            return False, None
        return True, self.model.threshold if self.model.threshold is not None else served["threshold"]

    def to_dict(self) -> dict:
        applies, threshold = self.decision()
        return {
            "model": {"path": self.model.path, "version": self.model.version, "task": self.model.task_name,
                      "classes": list(self.model.classes), "threshold": threshold, "threshold_applies": applies},
            "predictions": self.predictions,
            "errors": [e.to_dict() for e in self.errors],
            "skipped": [e.to_dict() for e in self.skipped],
            "hidden_skipped": self.hidden,
        }


@dataclasses.dataclass
class Prepared:
    """Inputs as curation prepares them, before the model: what to predict and what was refused."""

    inputs: Inputs
    files: list[str]  # the files that prepared, in order
    pngs: list[bytes]  # their PNGs, for the model
    errors: list[InputError]  # given paths that hold nothing to predict, then files curation refuses


def prepare_inputs(paths: Sequence[str], preparation: Preparation) -> Prepared:
    """Finds and prepares every input (:func:`find_inputs`, :func:`prepare`); no model needed."""
    inputs = find_inputs(paths)
    prepared = Prepared(inputs, [], [], list(inputs.errors))
    for file in inputs.files:
        try:
            prepared.pngs.append(prepare(file, preparation))
            prepared.files.append(file)
        except images.ImageError as e:
            prepared.errors.append(InputError(file, str(e)))
    return prepared


def predict_paths(model: ServingModel, paths: Sequence[str], explain_dir: Optional[str] = None,
                  preparation: Optional[Preparation] = None) -> PredictResult:
    """Finds, prepares and predicts every input; optionally writes one explanation PNG per image."""
    preparation = preparation or Preparation.from_metadata(model.metadata)
    return predict_prepared(model, prepare_inputs(paths, preparation), explain_dir)


def predict_prepared(model: ServingModel, prepared: Prepared, explain_dir: Optional[str] = None) -> PredictResult:
    """Predicts the inputs :func:`prepare_inputs` prepared; optionally writes one explanation PNG per image.
    With none prepared, ``model`` is never run (:func:`find_model`'s, not loaded, will do)."""
    rows, predict_errors = predict_pngs(model, prepared.files, prepared.pngs)
    errors = prepared.errors + predict_errors
    if explain_dir is not None and rows:
        from covid_cxr.serving import explain

        png_of = dict(zip(prepared.files, prepared.pngs))
        explainer = explain.Explainer(model)
        names = explain.output_names([r["file"] for r in rows])
        os.makedirs(explain_dir, exist_ok=True)
        for row, name in zip(rows, names):
            out_path = os.path.join(explain_dir, name)
            try:
                method = explainer.write_overlay(png_of[row["file"]], row, out_path)
                row["explanation"], row["explanation_method"] = out_path, method
            except explain.ExplainError as e:
                row["explanation"], row["explanation_method"] = None, None
                errors.append(InputError(row["file"], f"explanation failed: {e}"))
    order = {f: i for i, f in enumerate(prepared.inputs.files)}
    errors.sort(key=lambda e: order.get(e.file, -1))
    return PredictResult(model, rows, errors, prepared.inputs.skipped, prepared.inputs.hidden)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


MAX_SKIPPED_SHOWN = 20  # a folder of DICOM exports can hold hundreds of notes and previews


def format_table(result: PredictResult, blessed: tuple[Optional[str], str]) -> str:
    """The table `predict` prints; ``blessed``: :func:`blessed_record` of the model, for its header."""
    model = result.model
    applies, threshold = result.decision()
    decision = ("no COVID threshold: label = most probable class" if not applies
                else f"COVID threshold {threshold:.4f}" if threshold is not None
                else "COVID threshold (not stored in its metadata)")
    lines = [f"model {model.path} ({approval_text(model.version, *blessed)}, "
             f"task {model.task_name}, {decision})"]
    if trained_on_synthetic(model):
        lines.append(f"WARNING: {SYNTHETIC}")
    names = list(result.predictions[0]["probabilities"]) if result.predictions else list(model.classes)
    entries = [(r["file"], r) for r in result.predictions] + [(e.file, e) for e in result.errors]
    width = min(60, max([len("file")] + [len(f) for f, _ in entries]))
    checked = any("atypical" in r for r in result.predictions)
    header = (f"{'file':<{width}}  {'label':<10}" + "".join(f"  {'P(' + n + ')':>13}" for n in names)
              + ("  atypicality" if checked else ""))
    lines += [header, "-" * len(header)]
    for file, entry in entries:
        shown_file = file if len(file) <= width else "..." + file[-(width - 3):]
        if isinstance(entry, InputError):
            lines.append(f"{shown_file:<{width}}  ERROR: {entry.error}")
        else:
            probs = "".join(f"  {entry['probabilities'][n]:>13.4f}" for n in names)
            flag = (f"  {entry['atypicality']:>11.2f}" + ("  ATYPICAL" if entry["atypical"] else "")
                    if "atypical" in entry else "")
            # Which heat map is this row's: a DICOM's is named by its position, not by its file.
            heat_map = f"  {os.path.basename(entry['explanation'])}" if entry.get("explanation") else ""
            lines.append(f"{shown_file:<{width}}  {entry['label']:<10}{probs}{flag}{heat_map}")
    explained = [r["explanation"] for r in result.predictions if r.get("explanation")]
    summary = f"{len(result.predictions)} predicted, {len(result.errors)} failed"
    atypical = sum(bool(r.get("atypical")) for r in result.predictions)
    if atypical:
        quantile = (model.metadata.get("typicality") or {}).get("quantile", typicality.DEFAULT_QUANTILE)
        summary += (f"; {atypical} ATYPICAL: far from the training films (by design, so are about {1 - quantile:.0%} "
                    "of ordinary chest films): check body part, view and modality before trusting the label")
    if result.skipped or result.hidden:
        summary += (f"; skipped {len(result.skipped)} files that are not images"
                    + (" or not regular files" if any(e.error != NOT_AN_IMAGE for e in result.skipped) else "")
                    + f" and {result.hidden} hidden files or folders")
    if explained:
        summary += f"; {len(explained)} explanation image(s) in {os.path.dirname(explained[0])}"
    lines.append(summary)
    lines += [f"skipped, {'not an image' if e.error == NOT_AN_IMAGE else e.error}: {e.file}"
              for e in result.skipped[:MAX_SKIPPED_SHOWN]]
    if len(result.skipped) > MAX_SKIPPED_SHOWN:
        lines.append(f"... and {len(result.skipped) - MAX_SKIPPED_SHOWN} more (--json lists every one)")
    return "\n".join(lines)


@click.command("predict")
@click.option("--model", "model_path", required=True, type=UserPath(),
              help="Pushed version dir, serving base dir (newest version is used) or exported SavedModel.")
# Not click's readable check: an unreadable file is one row's error ("cannot read image"), not the whole command's.
@click.argument("inputs", nargs=-1, required=True, type=UserPath(readable=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (predictions and per-file errors) instead of a table.")
@click.option("--explain", "explain_dir", type=UserPath(file_okay=False), default=None,
              help="Write a heat-map overlay PNG per image into this directory: Grad-CAM (for an averaged "
                   "ensemble such as the full preset's, the mean of its members' maps), or gradient saliency "
                   "for a model without a convolution (the caption names the method).")
@max_side_option()
@click.option("--equalize", "equalization", type=click.Choice(images.EQUALIZE_MODES), default=None,
              help="Equalization as in curation (default: the model metadata's, else none).")
def predict_command(model_path, inputs, as_json, explain_dir, max_side, equalization):
    """Classify PNG/JPEG/DICOM chest radiographs (files or directories) with a covid-cxr model.

    Research use only: not a diagnostic device. Exit code 1 when any input could not be classified.
    """
    if explain_dir is not None:  # before the work: found at the end, it lost the predictions
        writer.check_writable(explain_dir, "--explain")
    model = find_model(model_path)  # its metadata says how to prepare the inputs
    prepared = prepare_inputs(inputs, Preparation.from_metadata(model.metadata, max_side, equalization))
    if prepared.files:  # else every input is refused already: loading the model (half a minute) changes no row
        model = load_model(model_path, model)
    blessed = blessed_record(model)  # read once: the warning and the table's header
    warn_if_unpushed(model, blessed)
    warn_if_synthetic(model)
    result = predict_prepared(model, prepared, explain_dir)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_table(result, blessed))
    sys.exit(1 if result.failed else 0)
