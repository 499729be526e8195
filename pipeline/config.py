"""The one typed configuration every run is built from.

Precedence: dataclass defaults < preset (``pipeline/presets/<name>.yaml``) < user YAML file <
``--set section.field=value`` / named CLI flags. Unknown keys and wrong types are errors, so a
typo in a config file never silently falls back to a default.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import re
import typing
from typing import Any, Iterable, Mapping, Optional

import click
import yaml

from covid_cxr.messages import first_line

if typing.TYPE_CHECKING:
    from covid_cxr.data import features

PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")
CHECKOUT_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the repo root is the package (links resolved)


class ConfigError(ValueError):
    """A user error in the configuration: reported as one line, never a traceback."""


# The type of a field that names a file or folder (a local path or a URI). Declaring it is all a new path
# field needs: its value is read as a shell reads a path (user_path), and two spellings of one place are
# one value on the command line (same_setting). Plain str to everything else (typing.get_type_hints drops
# the annotation unless asked for it: path_fields).
PathStr = typing.Annotated[str, "a file or folder"]


@dataclasses.dataclass
class DataConfig:
    data_dir: PathStr = ""  # a directory written by `covid-cxr curate` (or `demo`)
    # ExampleGen hash-bucket split on the patient/duplicate group: train / eval (model selection,
    # early stopping, threshold) / test (the Evaluator's gate, never seen by training or tuning).
    train_buckets: int = 14
    eval_buckets: int = 3
    test_buckets: int = 3
    # The reviewed schema ImportSchema imports; empty = the one shipped in pipeline/schema/.
    schema_file: PathStr = ""


@dataclasses.dataclass
class ModelConfig:
    task: str = "covid-vs-normal"
    image_size: int = 224  # Transform output size; models may resize further down
    # Fraction of each side the Transform cuts off before resizing (0 to 0.25): the band inside
    # the black frame holds burnt-in markers that identify the hospital (transform.preprocessing).
    # 0 by default: 0.1 cost 0.015 test AUC on covid-vs-normal and did not help the films it
    # aimed at (docs/results.md, stop 14).
    border_crop: float = 0.0
    families: list[str] = dataclasses.field(default_factory=lambda: ["mobilenet_v2"])  # Tuner chooses among these
    # Families trained next to the Tuner's choice with the same hyperparameters; the served model
    # averages their probabilities (empty: one model). Two different backbones err on different films.
    ensemble_with: list[str] = dataclasses.field(default_factory=list)
    weights: PathStr = "auto"  # auto | imagenet | none | path to an .h5 file
    weights_dir: PathStr = ""  # where `auto` looks for offline ImageNet files
    # When no pretrained weights can be had: a family to build instead (the BatchNorm scratch CNN
    # learns on small data; a random-init MobileNetV2 does not), `none` (same family, random init)
    # or `error`.
    fallback: str = "bn_double_conv"
    augment: bool = True  # rotation/shift/shear/zoom/flip (training only)
    # Their sizes (trainer.models.AugmentConfig; its limits: GEOMETRY_LIMITS): the source studies' values.
    augment_rotation_degrees: float = 15.0  # up to this many degrees either way
    augment_shift: float = 0.1  # up to this fraction of the height and of the width
    augment_shear: float = 0.1  # shear factor in [-s, s] on both axes (0.1 ~ 5.7 degrees)
    augment_zoom: float = 0.1  # scale in [1 - z, 1 + z]
    augment_horizontal_flip: bool = True
    # Grey-level augmentation on top (training only; 0 = off): contrast factor in [1 - c, 1 + c]
    # and gamma in [exp(-g), exp(g)] per film (trainer.models.RandomIntensity).
    augment_contrast: float = 0.0
    augment_gamma: float = 0.0


@dataclasses.dataclass
class TrainingConfig:
    batch_size: int = 32
    epochs: int = 12  # frozen-base phase (early stopping may end it sooner)
    fine_tune_epochs: int = 6
    early_stopping_patience: int = 3
    target_sensitivity: float = 0.95  # the stored decision threshold is chosen on eval to meet this
    # > 0: when eval allows both targets, the threshold shares the slack between them instead of
    # sitting right on the sensitivity target (trainer.training.choose_threshold); 0: sensitivity only.
    target_specificity: float = 0.0
    # 0..1: weight examples so a source that sends nearly all of one class (Cohen's COVID films)
    # stops predicting the label (trainer.training.source_class_weights); 0: class balance only.
    source_balance: float = 0.0
    # 0..0.5: training targets pulled this far towards the uniform distribution (0 = hard labels;
    # 0.5 would leave nothing to learn); trainer.models.HParams.label_smoothing.
    label_smoothing: float = 0.0
    seed: int = 42
    # The served model flags inputs unlike its training films (serving.typicality): features further
    # from the training films' than this quantile of the eval films' are `atypical`. 0: no check.
    # 0.95 rather than 0.99: 0.99 let most lateral films through (docs/results.md, stop 35).
    atypical_quantile: float = 0.95
    # 0.5..<1: an ensemble member whose eval AUC alone is below this is not averaged into the served
    # model (it never learned: quick's cnn4 once ended at 0.50); when none reaches it the best is served.
    member_min_auc: float = 0.6
    # Phase 1 (frozen pretrained backbone) and Tuner trials train the head on backbone features
    # computed once per split, without augmentation, instead of running the backbone over augmented
    # films every epoch (trainer.training.fit_head_on_features). Phase 2 is unchanged.
    cache_frozen_features: bool = False
    # One inter-op TensorFlow thread, a fixed intra-op count and one Beam worker: the same input in
    # the same order and far fewer differences (with the seed alone, concurrent ops and Beam's example
    # order make runs drift apart). Not bit-identical: now and then a training step on the same batch
    # differs in the last bit, and fine-tuning amplifies it (docs/results.md, stops 17-18).
    # Needs the environment set before TensorFlow loads, so it is off here for in-process callers
    # and on in the `full` preset. See trainer.training.reproducible_thread_env.
    reproducible: bool = False
    # TensorFlow's oneDNN CPU kernels: on | off | auto (TensorFlow's own choice, which turns them on
    # only on CPUs with AVX-512 class features). They differ from the default kernels in the last
    # bits, so pinning them makes a run compute the same way on every machine. Like `reproducible`,
    # it is read when TensorFlow loads (trainer.training.process_env). `off` in the `full` preset,
    # whose published figures were all measured without oneDNN (docs/results.md, stops 21-22, 25).
    onednn: str = "auto"


@dataclasses.dataclass
class TunerConfig:
    enabled: bool = True
    trials: int = 4
    epochs: int = 3
    learning_rates: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 3e-4])
    dropouts: list[float] = dataclasses.field(default_factory=lambda: [0.2, 0.5])
    dense_units: list[int] = dataclasses.field(default_factory=lambda: [64, 128])
    image_sizes: list[int] = dataclasses.field(default_factory=list)  # empty: only model.image_size
    fine_tune_layers: list[int] = dataclasses.field(default_factory=lambda: [0, 20])
    # Fine-tuning learning rate = learning rate x factor.
    fine_tune_lr_factors: list[float] = dataclasses.field(default_factory=lambda: [0.1])
    # Epochs of fine-tuning in each trial, after its `epochs` with the backbone frozen. 0: trials
    # train the head only, which cannot compare fine-tuning depths or rates, so those two lists
    # must then hold one value each.
    fine_tune_epochs: int = 1


@dataclasses.dataclass
class GateConfig:
    min_sensitivity: float = 0.90
    min_specificity: float = 0.85
    min_auc: float = 0.0
    # A candidate may not lose more than this much AUC against the latest blessed model
    # (negative: it must *improve* on it by that much).
    max_auc_regression: float = 0.01
    # The latest blessed model (a TFX Resolver) as the baseline for that AUC check. Off for open-source
    # Kubeflow Pipelines 2.x, whose backend cannot run Resolver nodes (Vertex AI and LocalDagRunner can).
    compare_to_baseline: bool = True
    slice_features: list[str] = dataclasses.field(default_factory=lambda: ["source", "view", "sex"])


MAX_PIPELINE_NAME = 63  # tfx.orchestration.pipeline.Pipeline refuses longer names


@dataclasses.dataclass
class RuntimeConfig:
    # Empty: derived from the task (covid-cxr-<task>, out/<task>/root, out/<task>/serving), so two
    # tasks never share a Resolver baseline or a serving directory.
    pipeline_name: str = ""
    pipeline_root: PathStr = ""
    serving_dir: PathStr = ""
    metadata_path: PathStr = ""  # SQLite file; default <pipeline_root>/metadata.sqlite
    mysql_host: str = ""  # when set, ML Metadata lives in MySQL/MariaDB instead of SQLite
    mysql_port: int = 3306
    mysql_database: str = "covid_cxr_mlmd"
    mysql_user: str = "root"
    mysql_password: str = ""
    beam_running_mode: str = "in_memory"  # in_memory | multi_threading | multi_processing
    beam_workers: int = 0  # 0 = one per CPU core
    beam_extra_args: list[str] = dataclasses.field(default_factory=list)
    enable_cache: bool = True


@dataclasses.dataclass
class PipelineConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    tuner: TunerConfig = dataclasses.field(default_factory=TunerConfig)
    gate: GateConfig = dataclasses.field(default_factory=GateConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    @property
    def task(self) -> features.Task:
        from covid_cxr.data import features

        return features.get_task(self.model.task)

    def validate(self) -> "PipelineConfig":
        # features imports TensorFlow: here rather than at the top, so that a script can read its paths with
        # user_path before its heavy imports (step_determinism.py --help, a bad argument: no 5 s wait).
        from covid_cxr.data import features

        features.get_task(self.model.task)  # raises ValueError with the valid names
        for name, value in (("gate.min_sensitivity", self.gate.min_sensitivity),
                            ("gate.min_specificity", self.gate.min_specificity),
                            ("gate.min_auc", self.gate.min_auc),
                            ("training.target_sensitivity", self.training.target_sensitivity),
                            ("training.target_specificity", self.training.target_specificity),
                            ("training.source_balance", self.training.source_balance)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if not -1.0 <= self.gate.max_auc_regression <= 1.0:
            raise ConfigError(f"gate.max_auc_regression must be between -1 and 1, got {self.gate.max_auc_regression}")
        runtime, task = self.runtime, self.model.task
        runtime.pipeline_name = runtime.pipeline_name or f"covid-cxr-{task}"
        if len(runtime.pipeline_name) > MAX_PIPELINE_NAME:  # on every runner; Kubeflow's characters: kubeflow_runner
            raise ConfigError(f"runtime.pipeline_name {runtime.pipeline_name!r} is {len(runtime.pipeline_name)} characters: "
                              f"TFX takes at most {MAX_PIPELINE_NAME}")
        runtime.pipeline_root = runtime.pipeline_root or os.path.join("out", task, "root")
        runtime.serving_dir = runtime.serving_dir or os.path.join("out", task, "serving")
        if not 0.0 <= self.model.augment_contrast < 1.0 or not 0.0 <= self.model.augment_gamma <= 1.0:
            raise ConfigError(f"model.augment_contrast must be in [0, 1) and model.augment_gamma in [0, 1], got "
                              f"{self.model.augment_contrast} and {self.model.augment_gamma}")
        if self.training.atypical_quantile and not 0.5 <= self.training.atypical_quantile < 1.0:
            raise ConfigError(f"training.atypical_quantile must be 0 (no check) or in [0.5, 1), got "
                              f"{self.training.atypical_quantile}")
        if not 0.5 <= self.training.member_min_auc < 1.0:  # below chance, a member that learned nothing passes
            raise ConfigError(f"training.member_min_auc must be in [0.5, 1), got {self.training.member_min_auc}")
        if not 0.0 <= self.model.border_crop <= 0.25:
            raise ConfigError(f"model.border_crop must be between 0 and 0.25 (of each side), got {self.model.border_crop}")
        if not self.model.families:
            raise ConfigError("model.families must name at least one model family")
        for name in ("learning_rates", "dropouts", "dense_units", "fine_tune_layers", "fine_tune_lr_factors"):
            if not getattr(self.tuner, name):
                raise ConfigError(f"tuner.{name} must list at least one value")
        self._validate_ranges()
        searched = [n for n in ("fine_tune_layers", "fine_tune_lr_factors") if len(set(getattr(self.tuner, n))) > 1]
        if self.tuner.enabled and searched and not self.tuner.fine_tune_epochs:
            raise ConfigError(f"tuner.{searched[0]} lists several values, but with tuner.fine_tune_epochs 0 the Tuner's "
                              "trials only train the head, which cannot tell them apart: list one value, or set "
                              "tuner.fine_tune_epochs above 0")
        for name in ("train_buckets", "eval_buckets", "test_buckets"):  # ExampleGen's proto field is a uint32
            _in_range(f"data.{name}", getattr(self.data, name), 1, 2**32 - 1, integer=True)
        if self.runtime.beam_running_mode not in ("in_memory", "multi_threading", "multi_processing"):
            raise ConfigError(f"runtime.beam_running_mode {self.runtime.beam_running_mode!r} is not "
                              "in_memory, multi_threading or multi_processing")
        if self.runtime.mysql_host and not re.fullmatch(r"(?![0-9]+$)[0-9A-Za-z_$]{1,64}", self.runtime.mysql_database):
            # ML Metadata creates it unquoted: an empty name aborted the process without a word, and "a-b" came
            # back as "refused user ..., check the password" from a CREATE DATABASE syntax error.
            raise ConfigError(f"runtime.mysql_database {self.runtime.mysql_database!r} must be 1-64 letters, digits, _ "
                              "or $ (not only digits): ML Metadata creates it with that name unquoted")
        beam_error = _beam_args_error(list(self.runtime.beam_extra_args))
        if beam_error:
            raise ConfigError(f"runtime.beam_extra_args: {beam_error}")
        onednn = str(self.training.onednn).lower()  # YAML reads a bare on / off as a bool
        self.training.onednn = {"true": "on", "false": "off"}.get(onednn, onednn)
        if self.training.onednn not in ("on", "off", "auto"):
            raise ConfigError(f"training.onednn must be on, off or auto, got {self.training.onednn!r}")
        if self.training.reproducible:
            # With several workers Beam writes Transform's examples in a run-dependent order, so
            # training sees another shuffle (measured; docs/results.md). 0 means "one per core".
            if self.runtime.beam_workers == 0:
                self.runtime.beam_workers = 1
            elif self.runtime.beam_workers != 1:
                raise ConfigError("training.reproducible needs runtime.beam_workers=1 (with more workers "
                                  f"the examples' order varies run to run), got {self.runtime.beam_workers}")
        field_error = _beam_field_override_error(self.runtime)
        if field_error:
            raise ConfigError(f"runtime.beam_extra_args: {field_error}")
        return self

    def _validate_ranges(self) -> None:
        """Counts, rates and names a run would otherwise fail on minutes in, or silently ignore."""
        from covid_cxr.data import features
        from covid_cxr.trainer import models  # the family registry; TensorFlow is loaded already

        t, tuner, size = self.training, self.tuner, self.model.image_size
        _in_range("model.image_size", size, 16, 1024, integer=True)
        _in_range("training.batch_size", t.batch_size, 1, None, integer=True)
        _in_range("training.epochs", t.epochs, 1, None, integer=True)
        _in_range("training.fine_tune_epochs", t.fine_tune_epochs, 0, None, integer=True)
        _in_range("training.early_stopping_patience", t.early_stopping_patience, 0, None, integer=True)
        _in_range("training.label_smoothing", t.label_smoothing, 0.0, 0.5)
        _in_range("tuner.trials", tuner.trials, 1, None, integer=True)
        _in_range("tuner.epochs", tuner.epochs, 1, None, integer=True)
        _in_range("tuner.fine_tune_epochs", tuner.fine_tune_epochs, 0, None, integer=True)
        _in_range("tuner.learning_rates", tuner.learning_rates, 0.0, 1.0, low_excluded=True)
        _in_range("tuner.dropouts", tuner.dropouts, 0.0, 0.95)
        _in_range("tuner.dense_units", tuner.dense_units, 0, None, integer=True)
        _in_range("tuner.fine_tune_layers", tuner.fine_tune_layers, 0, None, integer=True)
        # Phase 2 unfreezes pretrained layers: a rate as high as the new head's would wreck them.
        _in_range("tuner.fine_tune_lr_factors", tuner.fine_tune_lr_factors, 0.0, 1.0, low_excluded=True,
                  high_excluded=True, why="fine-tuning uses a lower learning rate than the head's")
        for name, (low, high, high_included) in models.GEOMETRY_LIMITS.items():
            _in_range(f"model.augment_{name}", getattr(self.model, f"augment_{name}"), low, high,
                      high_excluded=not high_included)
        _in_range("tuner.image_sizes", tuner.image_sizes, 16, size, integer=True)  # models resize down only
        _in_range("runtime.beam_workers", self.runtime.beam_workers, 0, None, integer=True)
        _in_range("runtime.mysql_port", self.runtime.mysql_port, 1, 65535, integer=True)
        _in_range("training.seed", t.seed, 0, 2**32 - 1, integer=True)  # Keras' seed range
        try:
            models.normalized_weights(self.model.weights)
        except ValueError as e:
            raise ConfigError(f"model.{e}") from None
        for name in ("families", "ensemble_with"):
            unknown = [f for f in getattr(self.model, name) if f not in models.FAMILIES]
            if unknown:
                raise ConfigError(f"model.{name}: unknown family {unknown[0]!r}; choose from {', '.join(models.FAMILIES)}")
        if self.model.fallback not in (*models.FALLBACK_CHOICES, *models.FAMILIES):
            raise ConfigError(f"model.fallback must be none, error or a family name, got {self.model.fallback!r}")
        unsliceable = [f for f in self.gate.slice_features if f not in features.SLICE_FEATURES]
        if unsliceable:
            raise ConfigError(f"gate.slice_features: {unsliceable[0]!r} is not a record feature to slice by; "
                              f"choose from {', '.join(features.SLICE_FEATURES)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_custom_config(self) -> dict:
        """What Tuner/Trainer receive: only the sections that determine the model, so that
        changing e.g. the serving directory does not invalidate their cache."""
        full = self.to_dict()
        return {"model": full["model"], "training": full["training"], "tuner": full["tuner"]}


def preset_names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def load_config(
    preset: Optional[str] = None,
    config_file: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    command_defaults: Optional[Mapping[str, Any]] = None,
) -> PipelineConfig:
    """Defaults, then the preset, then a command's own dotted defaults (`demo`'s paths under --out), then
    the YAML file, then dotted overrides (``gate.min_auc``)."""
    config = PipelineConfig()
    if preset:
        if preset not in preset_names():
            raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())}")
        _apply(config, _read_yaml(os.path.join(PRESETS_DIR, f"{preset}.yaml")), "preset " + preset)
        # A preset's relative weights_dir (../shared/weights) lies beside the checkout, wherever
        # the command runs from; relative paths in a user's file or --set stay relative to the cwd.
        if config.model.weights_dir and not os.path.isabs(config.model.weights_dir):
            config.model.weights_dir = os.path.normpath(os.path.join(CHECKOUT_DIR, config.model.weights_dir))
    _apply_dotted(config, command_defaults or {})
    if config_file:
        _apply(config, _read_yaml(config_file), config_file)
    _apply_dotted(config, overrides or {})
    try:
        return config.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _apply_dotted(config: PipelineConfig, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        section, _, field = key.partition(".")
        if not field:
            raise ConfigError(f"override {key!r} must be section.field, e.g. gate.min_sensitivity")
        _apply(config, {section: {field: value}}, "override")  # the field names itself in the message


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: YAML keeps the last
    silently, so a second `model:` section would drop the first."""

    def construct_mapping(self, node, deep=False):
        merge = "tag:yaml.org,2002:merge"  # `<<: *anchor` is resolved by the base class
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == merge:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # a list or mapping as a key: the base class says so in YAML's words
                continue
            if twice:  # pointing at the second one
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> Mapping:
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path!r} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        # Where the construct began and what went wrong where, not only the parser's first line.
        parts = [f"{text} (line {mark.line + 1}, column {mark.column + 1})"
                 for text, mark in ((getattr(e, "context", None), getattr(e, "context_mark", None)),
                                    (getattr(e, "problem", None), getattr(e, "problem_mark", None)))
                 if text and mark is not None]
        raise ConfigError(f"config {path!r} is not valid YAML: {'; '.join(parts) or first_line(e)}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config {path!r} must be a mapping of sections, got {type(content).__name__}")
    return content


def _apply(config: PipelineConfig, values: Mapping, origin: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(config)}
    for section_name, section_values in values.items():
        if section_name not in sections:
            raise ConfigError(f"{origin}: unknown section {section_name!r}; sections: {', '.join(sections)}")
        if not isinstance(section_values, dict):
            raise ConfigError(f"{origin}: section {section_name!r} must be a mapping")
        section = getattr(config, section_name)
        hints = typing.get_type_hints(type(section))
        paths = _path_names(type(section))
        known = {f.name for f in dataclasses.fields(section)}
        for name, raw in section_values.items():
            if name not in known:
                raise ConfigError(f"{origin}: unknown field {section_name}.{name}; fields: {', '.join(sorted(known))}")
            value = _coerce(raw, hints[name], f"{origin}: {section_name}.{name}")
            setattr(section, name, user_path(value) if name in paths else value)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """YAML values and CLI strings -> the field's declared type, or a ConfigError."""
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if value not in (True, False) or isinstance(value, float):
                raise ValueError(value)  # 5 or 0.5 is no yes/no answer
            return bool(value)
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            number = kind(value)
            if kind is int and isinstance(value, float) and value != number:
                raise ValueError(value)
            return number
        if kind is str:
            if isinstance(value, (list, dict)):
                raise ValueError(value)  # would become its Python repr
            return "" if value is None else str(value)
        if typing.get_origin(kind) is list:
            [item_kind] = typing.get_args(kind)
            if isinstance(value, str):  # --set: `[a, b]` is YAML; `a,b` is text split at commas
                value = yaml.safe_load(value) if value.strip().startswith("[") else [
                    v.strip() if item_kind is str else yaml.safe_load(v) for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError(value)
            # Each item as its declared type: `[--direct_num_workers, 2]` is two options, `[[a]]` no family.
            for i, item in enumerate(value):
                if item is None:
                    raise ConfigError(f"{where}[{i}]: an empty item")
                if item_kind is str and isinstance(item, bool):  # not "True": the user wrote on/no/yes/off
                    raise ConfigError(f"{where}[{i}]: YAML reads a bare yes/no/on/off/true/false as {item}; "
                                      "quote it to mean the word")
            return [_coerce(item, item_kind, f"{where}[{i}]") for i, item in enumerate(value)]
    except ConfigError:
        raise  # an item's own message
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(kind)}") from None
    return value


def _type_name(kind: Any) -> str:
    """int, float, ..., and "list of str" for list[str]."""
    if typing.get_origin(kind) is list:
        return f"list of {_type_name(typing.get_args(kind)[0])}"
    return getattr(kind, "__name__", str(kind))


def _in_range(name: str, values: Any, low: float, high: Optional[float], integer: bool = False,
              low_excluded: bool = False, high_excluded: bool = False, why: str = "") -> None:
    """ConfigError naming the field (and ``why``, when given) unless the value (or every listed value)
    is a number in [low, high] (without an end marked excluded), whole if ``integer``."""
    listed = isinstance(values, list)
    for value in values if listed else [values]:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and not math.isfinite(number):
            number = None  # nan passes every comparison, inf no whole-number check
        below = number is not None and (number <= low if low_excluded else number < low)
        above = number is not None and high is not None and (number >= high if high_excluded else number > high)
        if number is None or (integer and number != int(number)) or below or above:
            kind = ("whole numbers" if listed else "a whole number") if integer else ("numbers" if listed else "a number")
            if high is None:
                bounds = f"at least {low}"
            elif low_excluded or high_excluded:
                bounds = f"{'above' if low_excluded else 'at least'} {low} and {'below' if high_excluded else 'at most'} {high}"
            else:
                bounds = f"between {low} and {high}"
            reason = f" ({why})" if why else ""
            raise ConfigError(f"{name} must be {kind} {bounds}{reason}, got {value!r}")


def _path_names(section_class: type) -> set[str]:
    """The fields of one section declared PathStr."""
    return {name for name, hint in typing.get_type_hints(section_class, include_extras=True).items() if hint == PathStr}


def path_fields(config_class: Optional[type] = None) -> frozenset[str]:
    """The dotted names of the fields declared PathStr (data.data_dir, runtime.pipeline_root, ...), read
    from the annotations so that a new path field cannot be left out of a list."""
    sections = typing.get_type_hints(config_class or PipelineConfig)
    return frozenset(f"{field.name}.{name}" for field in dataclasses.fields(config_class or PipelineConfig)
                     for name in _path_names(sections[field.name]))


def user_path(text: str) -> str:
    """A path field's value as a shell reads a path, where no shell did (``--set runtime.pipeline_root=~/x``, whose
    ~ bash leaves alone, or a YAML file): a leading ~ or ~user is that home folder. Anything else stays as written."""
    return os.path.expanduser(text)


class UserPath(click.Path):
    """The type of every command's own path options (``--config``, ``--out``, ``--model``, ...): a path read as
    user_path reads a path field, so ``--out=~/x`` (whose ~ bash leaves alone) is the home folder's x, not a
    folder named ~ under the working directory."""

    def convert(self, value, param, ctx):
        return super().convert(user_path(value) if isinstance(value, str) else value, param, ctx)


def _same_place(path: str) -> str:
    """``path`` in one spelling per place. A URI keeps its scheme and inner slashes (gs://b//x is another
    object than gs://b/x, and normpath would make gs://b/x gs:/b/x); only a trailing slash goes."""
    if "://" in path:
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{rest.rstrip('/')}"
    return os.path.realpath(user_path(path))


def same_setting(key: str, text: str, value: Any) -> bool:
    """Whether --set's ``text`` for field ``key`` says ``value`` (another --set's text, or a flag's value):
    0.50 is .5, and for a path field (path_fields) out/x/ is out/x and ~/x is $HOME/x."""
    if text == str(value):
        return True
    if key in path_fields() and isinstance(value, str) and text and value:
        return _same_place(text) == _same_place(value)
    try:
        return float(text) == float(value)  # YAML reads 9e-1 as text
    except (TypeError, ValueError):
        pass
    try:
        return yaml.safe_load(text) == (yaml.safe_load(value) if isinstance(value, str) else value)
    except yaml.YAMLError:
        return False


def command_line_values(overrides: Iterable[str], named: Optional[Mapping[str, tuple[str, Any]]] = None) -> dict:
    """The dotted overrides of a command line: its ``--set`` texts, then ``named`` ({field: (flag, value)}, a value
    None when the flag was not given). A field given two different values (--set twice, or --set and the flag
    that sets it) is an error: keeping one of them dropped the other without a word."""
    values = {}
    for key, text in map(parse_override, overrides):
        if key in values and not same_setting(key, values[key], text):
            raise ConfigError(f"--set {key} is given twice, as {values[key]!r} and {text!r}: give it once")
        values[key] = text
    for key, (flag, value) in (named or {}).items():
        if value is None:
            continue
        if key in values and not same_setting(key, values[key], value):
            raise ConfigError(f"{flag} {value!r} and --set {key}={values[key]} disagree: give one of them")
        values[key] = value
    return values


def parse_override(text: str) -> tuple[str, str]:
    """'gate.min_auc=0.8' -> ('gate.min_auc', '0.8')."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r} must look like section.field=value")
    return key.strip(), value.strip()


# The Beam options a runtime field sets (option: field), given before runtime.beam_extra_args (beam_field_args).
BEAM_FIELD_OPTIONS = {"direct_running_mode": "beam_running_mode", "direct_num_workers": "beam_workers"}


def beam_field_args(runtime: RuntimeConfig) -> list[str]:
    """The Beam options of runtime.beam_running_mode and beam_workers, in BEAM_FIELD_OPTIONS' order."""
    return [f"--{option}={getattr(runtime, field)}" for option, field in BEAM_FIELD_OPTIONS.items()]


def without_beam_option(args: list, option: str) -> list[str]:
    """``args`` without the items that give Beam option ``option`` (``--opt=v``, ``--opt v``, or an abbreviation,
    which Beam's parser accepts), for when a changed field's value must win over one they repeated."""
    from apache_beam.options.pipeline_options import PipelineOptions

    others = set(PipelineOptions([]).get_all_options()) - {option}
    kept, args = [], [str(a) for a in args]
    index = 0
    while index < len(args):
        name, has_value, _ = args[index].removeprefix("--").partition("=")
        if args[index].startswith("--") and name and option.startswith(name) and name not in others:
            index += 1 if has_value else 2  # the option and its value
            continue
        kept.append(args[index])
        index += 1
    return kept


def _beam_field_override_error(runtime: RuntimeConfig) -> Optional[str]:
    """The extra args come after the fields' options, so Beam's parser lets them win: ``--direct_num_workers=2``
    ran `full`'s reproducible run on two workers without a word. Parsed as Beam parses them (``--opt v`` too)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    fields = beam_field_args(runtime)
    alone = PipelineOptions(fields).get_all_options()
    combined = PipelineOptions(fields + [str(a) for a in runtime.beam_extra_args]).get_all_options()
    for option, field in BEAM_FIELD_OPTIONS.items():
        if combined[option] != alone[option]:
            return f"--{option} {combined[option]}, which runtime.{field} sets ({alone[option]}): set that field instead"
    return None


def _beam_args_error(args: list) -> Optional[str]:
    """Beam's parser reports a malformed option (``--runner`` with no value, a non-integer worker
    count) by printing its whole usage and exiting; this returns its one-line reason instead."""
    from apache_beam.options.pipeline_options import PipelineOptions  # only when validating

    stderr = io.StringIO()
    args = [str(a) for a in args]
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)  # its "Discarding unparseable args": said below in one line
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):  # its help, if asked
            known = PipelineOptions(args).get_all_options()
        # An option no Beam options class knows is dropped with that log line: a typo goes unnoticed.
        unknown = sorted(set(PipelineOptions(args).get_all_options(retain_unknown_options=True)) - set(known))
    except SystemExit:
        lines = stderr.getvalue().strip().splitlines()
        if not lines:  # argparse exits without an error line after printing its help
            return "Beam's option parser printed its help and exited (-h / --help is not an option to run with)"
        return lines[-1].split("error: ", 1)[-1]
    finally:
        beam_log.setLevel(level)
    if not unknown:
        return None
    # As the user wrote it ("-v", "--foo=bar"), not as Beam keys it ("v", "foo").
    written = next((a.split("=", 1)[0] for a in args if a.lstrip("-").split("=", 1)[0] == unknown[0]), unknown[0])
    return f"{written} is not a Beam option (Beam would drop it)"
