"""The `covid-cxr` command: demo, run, curate, locate, evaluate, predict, compile."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

import covid_cxr


def _group_flag(argv: list, names: tuple) -> bool:
    """Whether one of ``names`` is among the group's options: only options before the command are the
    group's (after it, they are a usage error the command reports in one line)."""
    for token in argv[1:]:
        if token in names:
            return True
        if not token.startswith("-"):
            return False
    return False


def _verbose_requested(argv: list) -> bool:
    """`covid-cxr -v CMD ...` (after the command, -v is a usage error, reported without the import-time warnings)."""
    return _group_flag(argv, ("-v", "--verbose"))


VERSION_FLAGS = ("--version", "-V")
VERSION_MESSAGE = "%(prog)s %(version)s"


def _version_text() -> str:
    return VERSION_MESSAGE % {"prog": "covid-cxr", "version": covid_cxr.__version__}


# `covid-cxr --version` answers before the imports below, which load TensorFlow (seconds). Only when this
# module is the command (the console script, or `python -m covid_cxr.cli`): an importer's argv is its own.
if (__name__ == "__main__" or os.path.basename(sys.argv[0]) == "covid-cxr") and _group_flag(sys.argv, VERSION_FLAGS):
    print(_version_text())
    sys.exit(0)

if not _verbose_requested(sys.argv):
    covid_cxr.quiet_import_warnings()

import click  # noqa: E402

from covid_cxr.messages import first_line  # noqa: E402
from covid_cxr.pipeline.config import ConfigError, UserPath, command_line_values, load_config, preset_names  # noqa: E402

# User errors end in one line and exit code 2; a failing run ends in one line and exit code 1.
USER_ERRORS = (ConfigError, FileNotFoundError, PermissionError, ValueError)


class _LogHandler(logging.StreamHandler):
    """Log lines that read like the CLI's own ("covid-cxr: warning: ..."; -v adds time and logger name),
    written to the sys.stderr of the moment (a test runner swaps it)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s" if verbose else "%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass

    def format(self, record: logging.LogRecord) -> str:
        return f"covid-cxr: {record.levelname.lower()}: {super().format(record)}"


def _quiet_logs(verbose: bool) -> None:
    from absl import logging as absl_logging

    level = logging.INFO if verbose else logging.WARNING
    # Our own root handler instead of the plain one that absl's first log call (TFMA's, at import)
    # installs through basicConfig: its "WARNING:covid_cxr.trainer.task:..." lines reached users.
    # Handlers of other types (a test runner's capture) stay.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h) in (logging.StreamHandler, _LogHandler)]:
        root.removeHandler(handler)
    root.addHandler(_LogHandler(verbose))
    # Quiet mode hides absl's ERROR lines too: TFX logs "Execution N failed" there, and the CLI says
    # what failed in one line of its own.
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.FATAL)
    logging.getLogger().setLevel(level)
    logging.getLogger("tensorflow").setLevel(level if verbose else logging.ERROR)
    # Beam logs a failing transform's traceback at ERROR before raising; the CLI's line says it.
    for name in ("apache_beam", "absl"):
        logging.getLogger(name).setLevel(level if verbose else logging.CRITICAL)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a container stopping): unwinds like Ctrl-C, so TFX cleans up as it does for that and
    the Pusher removes a half-staged copy, and ends in one line instead of a silent exit."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _process_state_restored():
    """The SIGTERM handler and PYTHONWARNINGS that :func:`main` sets are the command's: a caller in the same
    process (a test runner, which then starts processes of its own) gets its own back when the command ends."""
    handler, env = signal.getsignal(signal.SIGTERM), os.environ.get("PYTHONWARNINGS")
    try:
        yield
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
        if env is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = env


def _fail(message: str, code: int) -> None:
    click.echo(f"covid-cxr: error: {message}", err=True)
    sys.exit(code)


class CliGroup(click.Group):
    """Turns known errors raised anywhere below into one-line messages instead of tracebacks."""

    def main(self, args=None, prog_name=None, **extra):
        # Click's own usage errors print usage, a hint and the error on three lines; one is enough.
        extra.pop("standalone_mode", None)
        self.args = list(sys.argv[1:] if args is None else args)  # to restart the same command
        with _process_state_restored():
            self._main(args, prog_name, **extra)

    def _main(self, args, prog_name, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.UsageError as e:
            path = getattr(e, "command_path", None) or (e.ctx.command_path if e.ctx is not None else "")
            command = f"{path} " if path else ""
            if isinstance(e, click.NoSuchOption) and e.option_name in ("-v", "--verbose"):
                # `covid-cxr run ... -v` is the natural guess after a run failed with "re-run with --verbose".
                _fail(f"{e.format_message()} here: -v / --verbose goes before the command, as in `covid-cxr -v "
                      f"{e.ctx.info_name if e.ctx is not None else 'run'} ...`", e.exit_code)
            _fail(f"{e.format_message()} (see `{command}--help`)", e.exit_code)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.exceptions.Abort:
            _fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        from covid_cxr.components.schema_gate import DataValidationError
        from covid_cxr.local_runner import PipelineRunError

        verbose = bool(ctx.params.get("verbose"))
        try:
            return super().invoke(ctx)
        except DataValidationError as e:
            _fail(first_line(e) + " (the run stopped before Transform; fix the data or the schema)", 1)
        except USER_ERRORS as e:
            _fail(first_line(e), 2)
        except Terminated:
            _fail("terminated (SIGTERM)", 128 + signal.SIGTERM)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except click.UsageError as e:
            # click's parser raises some (an option without its value) without the command's context: name it
            # here, or the hint says "(see `--help`)", the group's help.
            if e.ctx is None and ctx.invoked_subcommand:
                e.command_path = f"{ctx.command_path} {ctx.invoked_subcommand}"
            raise
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as e:  # a component failed: say which; --verbose shows the traceback
            if verbose:
                logging.getLogger(__name__).error("the run failed", exc_info=e.__cause__ or e)
            message = first_line(e, with_type=not isinstance(e, PipelineRunError))
            _fail(f"the run failed: {message}" + ("" if verbose else " (re-run with --verbose for the details)"), 1)


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="Show TFX/Beam/TensorFlow progress logs.")
# The fast path above answers the command; this one an in-process caller (and lists it in --help).
@click.version_option(covid_cxr.__version__, *VERSION_FLAGS, prog_name="covid-cxr", message=VERSION_MESSAGE,
                      help="Print the version and exit.")
def main(verbose: bool) -> None:
    """covid-cxr: public chest X-rays -> a COVID-19 classifier that is deployed only when it
    proves its sensitivity and specificity on held-out patients."""
    _quiet_logs(verbose)
    if not verbose:  # Beam's multi_processing workers are new Pythons: without it a quick run printed 36 warning lines
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    signal.signal(signal.SIGTERM, _raise_terminated)


def config_options(func):
    """Flags shared by every command that builds a pipeline config."""
    options = [
        click.option("--preset", type=click.Choice(preset_names()), default=None,
                     help="Preset to start from: quick (minutes; the demo's default) or full (real training; "
                          "the default of run and compile)."),
        click.option("--config", "config_file", type=UserPath(dir_okay=False), default=None,
                     help="YAML config file (sections: data, model, training, tuner, gate, runtime)."),
        click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                     help="Override any config field, e.g. --set training.epochs=3 (repeatable)."),
        click.option("--task", default=None, help="Task: covid-vs-normal, covid-vs-pneumonia, covid-vs-noncovid, three-class."),
        click.option("--pipeline-root", default=None, type=UserPath(),
                     help="Where TFX writes artifacts (and the SQLite MLMD)."),
        click.option("--serving-dir", default=None, type=UserPath(),
                     help="Where blessed models are pushed, one version per directory."),
        click.option("--min-sensitivity", type=float, default=None, help="Gate: minimum test sensitivity."),
        click.option("--min-specificity", type=float, default=None, help="Gate: minimum test specificity."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_config(preset, config_file, overrides, task=None, pipeline_root=None, serving_dir=None,
                 min_sensitivity=None, min_specificity=None, data_dir=None, command_defaults=None, data_flag="--data"):
    """The command's config: --set and the named flags, each field given one value (command_line_values)."""
    named = {
        "data.data_dir": (data_flag, data_dir), "model.task": ("--task", task),
        "runtime.pipeline_root": ("--pipeline-root", pipeline_root), "runtime.serving_dir": ("--serving-dir", serving_dir),
        "gate.min_sensitivity": ("--min-sensitivity", min_sensitivity),
        "gate.min_specificity": ("--min-specificity", min_specificity),
    }
    return load_config(preset, config_file, command_line_values(overrides, named), command_defaults)


def restart_with_process_env_if_needed(config) -> None:
    """``training.reproducible`` and ``training.onednn`` need variables that TensorFlow reads when
    it loads, and this process has loaded it: start the same command again with them set."""
    from covid_cxr.trainer import training

    missing = training.process_env_problems(config.training.reproducible, config.training.onednn)
    if missing:
        # Say so when a value the user exported is replaced: the config decides.
        settings = [f"{k}={v}" + (f" (was {os.environ[k]})" if k in os.environ else "") for k, v in missing.items()]
        click.echo(f"restarting with the TensorFlow settings of training.reproducible / training.onednn: {', '.join(settings)}")
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "covid_cxr.cli", *main.args],
                  {**os.environ, **missing})


REFUSED_EXIT = 3  # `run --require-blessed`: the run ended without a blessed model (the gate refused it)


def print_outcome(outcome, serving_dir: str) -> None:
    if outcome is None:
        click.echo("The pipeline finished but recorded no push decision.")
        return
    click.echo("")
    click.echo(outcome.report.headline())
    absent = outcome.report.missing_side()
    unmeasurable = outcome.report.unmeasurable()
    # One column for the values: "sensitivity at the gate's specificity" is longer than the old fixed 28.
    shown = ("sensitivity", "specificity", "AUC", "accuracy", "precision", "examples")
    width = max([28] + [len(key) for key in outcome.report.metrics if key.startswith(shown) and not key.endswith("change")])
    for name in shown:
        for key, value in outcome.report.metrics.items():
            if key.startswith(name) and not key.endswith("change"):
                if key in unmeasurable:
                    click.echo(f"  {key:<{width}} not measurable")
                else:
                    click.echo(f"  {key:<{width}} {value:.4f}" if name != "examples" else f"  {key:<{width}} {int(value)}")
    if absent:
        click.echo(f"  the test split holds no {absent} films (its patients are drawn by hash): curate more "
                   "patients, or change data.*_buckets")
    counts = outcome.report.confusion_counts()
    if counts:
        click.echo(f"  at the served decision: {counts['tp']} TP, {counts['fn']} FN, {counts['tn']} TN, {counts['fp']} FP")
        for name, entry in outcome.report.intervals().items():
            if entry["value"] is not None:
                click.echo(f"  {name + ' 95% CI (Wilson)':<{width}} {entry['ci95'][0]:.4f} - {entry['ci95'][1]:.4f}")
    for failure in outcome.report.failures:
        click.echo(f"  failed: {failure}")
    if outcome.pushed:
        click.echo(f"Model pushed to {outcome.destination}")
    elif outcome.blessed:
        click.echo(f"Not pushed again: {outcome.reason} ({outcome.destination})")
    elif _holds_a_model(serving_dir):
        click.echo("Not pushed: the serving directory keeps its previous model.")
    else:
        click.echo(f"Not pushed, and {serving_dir} holds no earlier model. predict and evaluate take the "
                   f"refused one as --model {outcome.model_uri}")
    click.echo(f"Model artifact: {outcome.model_uri}")
    click.echo(f"Evaluation:     {outcome.evaluation_uri}")
    if outcome.decision_record:  # the gate's verdict, failures and thresholds, for a refused model too
        click.echo(f"Gate decision:  {outcome.decision_record}")


def _holds_a_model(serving_dir: str) -> bool:
    from covid_cxr.components import pusher

    return bool(pusher.versions(serving_dir))  # the run checked the folder before it started


def _existing_synthetic(data_dir: str, task: str, patients_per_class: int) -> dict:
    """The summary of a synthetic dataset already in data_dir with these settings, else {}."""
    from covid_cxr.data import writer

    try:
        summary = writer.read_summary(data_dir)
    except FileNotFoundError:
        return {}
    if not summary.get("synthetic"):  # writing the demo's data there would delete its records
        raise writer.OutputError(f"the demo's data folder {data_dir!r} holds a dataset `curate` wrote, which the "
                                 "demo would replace: choose another --out")
    same = summary.get("task") == task and summary.get("patients_per_class") == patients_per_class
    return summary if same else {}


# The fewest patients per class with which the demo's seed deals every class of every task into each
# of train, eval and test at the default buckets (14/3/3); with 11, test holds no normal patient and
# the run refuses it. The first n synthetic patients are the same at any size, so more is safe.
DEMO_MIN_PATIENTS_PER_CLASS = 12


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=UserPath(file_okay=False),
              help="Directory for the synthetic data, pipeline root and serving models.")
@click.option("--patients-per-class", default=60, show_default=True,
              type=click.IntRange(DEMO_MIN_PATIENTS_PER_CLASS, 10000),
              help="Synthetic patients of each finding the task uses; fewer than "
                   f"{DEMO_MIN_PATIENTS_PER_CLASS} leave some split without a class.")
@config_options
def demo(out, patients_per_class, preset, config_file, overrides, **named):
    """Generate the embedded synthetic dataset and run the whole pipeline on it (quick preset)."""
    from covid_cxr import local_runner
    from covid_cxr.data import synthetic, writer

    # Beneath --config and --set, which say where otherwise (as named flags they overrode both, unsaid).
    under_out = {"runtime.pipeline_root": os.path.join(out, "root"), "runtime.serving_dir": os.path.join(out, "serving")}
    config = build_config(preset or "quick", config_file, overrides, data_dir=os.path.join(out, "data"),
                          command_defaults=under_out, data_flag="--out's data folder", **named)
    # Where it writes, before the minutes of generating data (OutputError is a ValueError: one line).
    writer.check_writable(config.data.data_dir, "the demo's data folder (--out)")
    local_runner.check_settings(config)
    restart_with_process_env_if_needed(config)
    summary = _existing_synthetic(config.data.data_dir, config.model.task, patients_per_class)
    click.echo(f"Generating synthetic radiographs (NOT medical data) for {config.model.task} in {config.data.data_dir} ...")
    if summary:
        # Rewriting identical records would still change file times, which ExampleGen fingerprints:
        # reusing them is what lets a second demo hit the cache and push nothing new.
        click.echo("  reusing the synthetic data already there")
    else:
        summary = synthetic.generate(config.data.data_dir, config.model.task, patients_per_class)
    click.echo(f"  {summary['accepted']} images of {summary['patients']} patients: {summary['per_class']}")
    click.echo(f"Running the pipeline (pipeline root {config.runtime.pipeline_root}) ...")
    # The settings were checked above, before the data was generated: only the data is checked now.
    print_outcome(local_runner.run(config, local_runner.check_data(config)), config.runtime.serving_dir)


@main.command()
@click.option("--data", "data_dir", required=True, type=UserPath(), help="Curated TFRecords (covid-cxr curate --out).")
@click.option("--require-blessed", is_flag=True,
              help=f"Exit with code {REFUSED_EXIT} unless the run ends with a blessed model (for CI; by default a "
                   "refusal exits 0).")
@config_options
def run(data_dir, require_blessed, preset, config_file, overrides, **named):
    """Run the pipeline on curated TFRecords with LocalDagRunner."""
    from covid_cxr import local_runner

    config = build_config(preset or "full", config_file, overrides, data_dir=data_dir, **named)
    checked = local_runner.check_inputs(config)  # a wrong --data or database fails at once, not after the restart below
    restart_with_process_env_if_needed(config)  # the restarted process checks again: warn after it, once
    held = checked.summary.get("held_out_of")
    if isinstance(held, dict):  # `curate --hold-out`'s external test set, given as the training data
        click.echo(f"covid-cxr: warning: {data_dir!r} is the external test set `curate --hold-out` wrote "
                   f"({held.get('source')}'s films, held out of {held.get('training_data')!r}): trained on, "
                   "they no longer test anything", err=True)
    for note in [*local_runner.split_notes(config, checked.split_counts), *local_runner.settings_notes(config)]:
        click.echo(f"note: {note}", err=True)
    outcome = local_runner.run(config, checked)  # checked above: the data, its films per split, the settings
    print_outcome(outcome, config.runtime.serving_dir)
    if require_blessed and not (outcome and outcome.blessed):
        sys.exit(REFUSED_EXIT)


@main.command("compile")
@click.option("--image", required=True, help="Container image with covid-cxr installed (see Dockerfile).")
@click.option("--output", default="covid-cxr-pipeline.json", show_default=True, type=UserPath(dir_okay=False),
              help="*.json: a Vertex AI PipelineJob; *.yaml: a pipeline spec for open-source Kubeflow Pipelines 2.x.")
@click.option("--data", "data_dir", required=True, type=UserPath(), help="Curated TFRecords, usually gs://...")
@config_options
def compile_command(image, output, data_dir, preset, config_file, overrides, **named):
    """Compile the pipeline to a Vertex AI (JSON) or Kubeflow Pipelines (YAML) spec."""
    from covid_cxr import kubeflow_runner

    kubeflow_runner.check_image(image)
    config = build_config(preset or "full", config_file, overrides, data_dir=data_dir, **named)
    notes = kubeflow_runner.compile_pipeline(config, output, image)
    for note in [n for n in [kubeflow_runner.image_note(image)] if n] + notes:
        click.echo(f"note: {note}")
    click.echo(f"Pipeline spec written to {output}")


# Commands that live beside the stage they belong to.
from covid_cxr.data.curate import curate_command, locate_command  # noqa: E402
from covid_cxr.evaluation.evaluate import evaluate_command  # noqa: E402
from covid_cxr.serving.predict import predict_command  # noqa: E402

main.add_command(curate_command, "curate")
main.add_command(locate_command, "locate")
main.add_command(evaluate_command, "evaluate")
main.add_command(predict_command, "predict")


if __name__ == "__main__":
    main()
