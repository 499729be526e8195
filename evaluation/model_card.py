"""The model card written beside every pushed model version (markdown)."""
from __future__ import annotations

FILE_NAME = "model_card.md"


def _table(values: dict) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(values.items())]
    return lines


def render(metadata: dict, report) -> str:
    """Markdown card from the model's metadata asset and its gate report (evaluation/gate_report.py)."""
    task = metadata.get("task", "unknown")
    lines = [
        f"# covid-cxr model card: {task}",
        "",
        "**Not a diagnostic device.** A research model that flags chest radiographs for COVID-19-like "
        "patterns. It must not be used for diagnosis or to rule out infection.",
        "",
        "## Model",
        f"- task: {task}; classes: {', '.join(metadata.get('classes', []))}",
        f"- family: {metadata.get('family', '?')} {metadata.get('family_note') or ''}".rstrip(),
        f"- decision threshold on COVID probability: {metadata.get('threshold', 0.5):.4f} "
        f"(chosen on the validation split for sensitivity >= {metadata.get('target_sensitivity', '?')})",
        f"- hyperparameters: {metadata.get('hyperparameters', {})}",
        "",
        "## Training data",
        f"- training examples per class: {metadata.get('train_class_counts', {})}",
        f"- validation examples per class: {metadata.get('eval_class_counts', {})}",
        "",
        f"## Held-out test evaluation ({report.headline()})",
        *_table(report.metrics),
        "",
    ]
    if report.failures:
        lines += ["Gate failures:", *[f"- {f}" for f in report.failures], ""]
    lines += [
        "## Intended use and limitations",
        "- Trained on public collections whose labels are the sources' labels, not radiologist re-reads.",
        "- Public COVID collections differ from their normal/pneumonia counterparts in hospital, age and "
        "acquisition: performance on a new hospital's films must be measured there before any use.",
        "- Frontal (PA/AP) adult chest radiographs only.",
    ]
    return "\n".join(lines) + "\n"
