"""scripts/benchmark_curation.py on a few synthetic films: it curates them and prints what it measured."""
import re

import pytest


@pytest.fixture(scope="module")
def benchmark_curation(load_script):
    return load_script("benchmark_curation")


def test_prints_throughput_and_the_memory_curation_took(benchmark_curation, capsys):
    assert benchmark_curation.main(["--synthetic", "6", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "corpus: synthetic, 12 films of 1024 x 1024" in out
    inputs = re.search(r"inputs (\d+) \(accepted (\d+), rejected (\d+)\) in [\d.]+ s: [\d.]+ images/s", out)
    assert inputs and int(inputs[1]) == 12 == int(inputs[2]) + int(inputs[3]) and int(inputs[2]) > 0
    memory = re.search(r"(\d+) MiB before curating, peak (\d+) MiB while curating \(\+(-?\d+) MiB\)", out)
    assert memory and int(memory[2]) >= int(memory[1]) and int(memory[3]) == int(memory[2]) - int(memory[1])


def test_refuses_a_negative_count(benchmark_curation, capsys):
    with pytest.raises(SystemExit) as info:
        benchmark_curation.main(["--synthetic", "-1"])
    assert info.value.code == 2 and "--synthetic must be 0 or more, got -1" in capsys.readouterr().err
