#!/usr/bin/env python
"""Where a served model finds its evidence: the share of each film's heat map in the film's borders.

For every film of a labelled TFRecord directory (by default the held-out test split of
``--pipeline-root``), the heat map `covid-cxr predict --explain` would draw for the predicted class
(Grad-CAM; for the `full` preset's averaged pair the mean of its members' maps) is measured by
covid_cxr/evaluation/attention_audit.py: the outer band's share of the heat, and whether the peak
lies in the band, per true class, against the band's share of the film's area. The data-side
counterpart, whether the borders alone predict the label, is `covid-cxr evaluate`'s shortcut audit.

    .venv/bin/python scripts/attention_audit.py --model runs/f/serving --pipeline-root runs/f/root
    .venv/bin/python scripts/attention_audit.py --model runs/f/root/Trainer/model/9 --data DIR --limit 50 --json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

from covid_cxr.data import features  # noqa: E402
from covid_cxr.evaluation import attention_audit  # noqa: E402
from covid_cxr.evaluation import evaluate as ev  # noqa: E402
from covid_cxr.serving import predict  # noqa: E402


def _per_class_limit(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the films kept: the first `limit` of each true class, in the split's order."""
    if limit is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)]))


def run(model_path: str, data_dir: str, limit: int | None = None, progress=None) -> dict:
    if not ev.is_tfrecord_dir(data_dir):  # a folder tree needs curation's preparation: evaluate has it
        raise ValueError(f"no TFRecords in {data_dir!r}: pass a curated directory or a run's Split-test; for a "
                         "folder of images use covid-cxr evaluate --attention")
    model = predict.load_model(model_path)
    data = ev.load_tfrecords(data_dir)
    task = ev.task_of(model, data)  # a model of another task is one line, before any heat map
    keep = _per_class_limit(data.labels, limit)
    predicted = model.predict_examples([data.serialized[i] for i in keep])["label_index"]
    sources = data.slices.get(features.SOURCE)
    result = attention_audit.audit_model(model, [data.images[i] for i in keep], data.labels[keep], predicted,
                                         task.classes, sources=[sources[i] for i in keep] if sources else None,
                                         progress=progress)
    result.update(data=data_dir, model=model.path)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a served model (serving dir or version) or a Trainer model")
    parser.add_argument("--data", help="a labelled TFRecord directory (curated, or a pipeline run's Split-test)")
    parser.add_argument("--pipeline-root", help="use this run's held-out test split when --data is not given")
    parser.add_argument("--limit", type=int, help="at most this many films of each true class (the first ones)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    with ev.one_line_errors("attention_audit.py"):
        data_dir = args.data or ev.held_out_split(args.pipeline_root)
        result = run(args.model, data_dir, args.limit, progress=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['model']} on {result['data']}: heat maps by {result['method']}"
          + (f" ({result['target']})" if result["target"] else ""))
    print("\n".join(attention_audit.summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
