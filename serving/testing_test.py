"""The tiny-model helper leaves nothing behind that could crash the interpreter at exit."""
import os
import subprocess
import sys
import textwrap

import covid_cxr

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(covid_cxr.__file__)))


def test_run_transform_in_a_fresh_process_frees_its_beam_graph_and_exits_cleanly(tmp_path):
    """A fresh interpreter, as when one test file runs alone: run_transform is where Beam is first
    imported. google.cloud.bigquery keeps ImportErrors whose tracebacks pinned run_transform's frame
    and its Beam graph until Py_Finalize, where freeing it crashed in protobuf (exit status 139,
    -11 here) after every test had passed. See testing._beam_modules."""
    script = textwrap.dedent(f"""
        import gc, os, sys
        from covid_cxr.data import synthetic
        from covid_cxr.serving import testing

        assert "apache_beam" not in sys.modules  # else this would not test the first import
        data_dir = os.path.join({str(tmp_path)!r}, "data")
        synthetic.generate(data_dir, "covid-vs-normal", patients_per_class=2, seed=0)
        testing.run_transform(data_dir, os.path.join({str(tmp_path)!r}, "transform"))
        gc.collect()
        from apache_beam.pipeline import Pipeline
        print("live Beam pipelines:", sum(isinstance(o, Pipeline) for o in gc.get_objects()))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip().splitlines()[-1] == "live Beam pipelines: 0"
    assert os.path.isdir(tmp_path / "transform" / "transform_fn")
