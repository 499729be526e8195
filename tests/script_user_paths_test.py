"""Every path argument of the scripts under scripts/ reads a leading ~ as the home folder, as the CLI's path
options do (config.user_path): bash leaves the ~ of ``--out=~/x`` alone, and a script left it too."""
import argparse
import glob
import os

import pytest

# Each script's path arguments, by dest, with the argv that gives each one ~/x (and the other required ones).
PATH_ARGUMENTS = {
    "atypical_check": (["--model=~/x", "--shared=~/x"], ["model", "shared"]),
    "benchmark_curation": ([], []),
    "benchmark_models": ([], []),
    "compare_models": (["--data=~/x", "--weights-dir=~/x", "--cache=~/x"], ["data", "weights_dir", "cache"]),
    "error_overlap": (["~/x", "--out=~/x"], ["roots", "out"]),
    "leak_check": (["~/x", "--roots", "~/x"], ["curated", "roots"]),
    "quality_benchmark": (["--out=~/x"], ["out"]),
    "step_determinism": (["--images=~/x", "--weights-dir=~/x"], ["images", "weights_dir"]),
    "threshold_check": (["~/x"], ["roots"]),
}


class _Parser(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def _parser_of(script, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``script``'s main() builds, caught as main() asks it to parse (main builds it inline)."""
    def catch(parser, *args, **kwargs):
        raise _Parser(parser)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Parser) as caught:
            script.main()
    return caught.value.parser


def test_every_script_is_listed():
    # A new script gets its path arguments listed (or an empty entry), so none is left reading ~ as a folder name.
    scripts = glob.glob(os.path.join(os.path.dirname(__file__), "..", "scripts", "*.py"))
    assert sorted(os.path.basename(s)[:-3] for s in scripts) == sorted(PATH_ARGUMENTS)


@pytest.mark.parametrize("name", [name for name, (argv, _) in PATH_ARGUMENTS.items() if argv])
def test_a_leading_tilde_in_a_path_argument_is_the_home_folder(name, load_script, monkeypatch, tmp_path):
    parser = _parser_of(load_script(name), monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    argv, dests = PATH_ARGUMENTS[name]
    args = vars(parser.parse_args(argv))
    home_x = str(tmp_path / "x")
    assert {dest: args[dest] for dest in dests} == {
        dest: [home_x] if isinstance(args[dest], list) else home_x for dest in dests}


def test_user_path_is_read_without_loading_tensorflow():
    # A script's argparse types run before its heavy imports: step_determinism.py --help took 0.4 s, not 5.
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    loaded = subprocess.run([sys.executable, "-c", "import sys; from covid_cxr.pipeline.config import user_path; "
                             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:1])"],
                            env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert loaded == "[]\n"
