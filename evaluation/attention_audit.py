"""Attention audit: does the *model* find its evidence in the film's borders?

The shortcut audit (shortcut_audit.py) asks whether the *data* lets a classifier read the label from
the outer band of the film alone. This asks where the served model looks. For each film, the heat
map `covid-cxr predict --explain` would draw for the predicted class (Grad-CAM; for an averaged
ensemble the mean of its members' maps) is split into the shortcut audit's outer band (15% of each
side) and the centre, where the lungs are:

* border share: the band's share of the map's total heat. A map spread evenly puts the band's area
  share there (51% for a 15% band). Per true class: the mean, with a Student's t 95% CI;
* peak in border: whether the map's hottest pixel lies in the band, with a Wilson 95% CI (a peak
  placed at random lands there with the band's area share).

Reading it: maps below the area share find their evidence in the chest; maps well above it, at the
edges -- markers, text, collimation, shoulders; maps near it are spread over the film (on the shared
corpus, `full`'s normal films: a film is normal for lack of findings, README). The band is a fixed
frame, not a lung segmentation (apices and costophrenic angles reach into it), so compare the classes
with each other and with the area share rather than reading one number alone. Blank maps (no positive
evidence for the predicted class) are counted and left out of the figures.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from covid_cxr.evaluation import metrics, shortcut_audit

BORDER_FRACTION = shortcut_audit.BORDER_FRACTION
# How to read the figures, for the report page and the model card alike.
READING = ("below the band's area share, the evidence is in the chest; near it, spread over the film; well above "
           "it, at the edges (markers, text, shoulders)")


def border_share(heat: np.ndarray, border: float = BORDER_FRACTION) -> Optional[float]:
    """The outer band's share of a square map's total heat; None for a blank map."""
    heat = np.asarray(heat, dtype=np.float64)
    total = float(heat.sum())
    if total <= 0:
        return None
    return float(heat[shortcut_audit.border_mask(heat.shape[0], border)].sum() / total)


def peak_in_border(heat: np.ndarray, border: float = BORDER_FRACTION) -> bool:
    """Whether the map's hottest pixel (the first, row by row, of equal ones) lies in the outer band."""
    heat = np.asarray(heat)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(shortcut_audit.border_mask(heat.shape[0], border)[row, col])


def band_area_share(size: int, border: float = BORDER_FRACTION) -> float:
    return float(shortcut_audit.border_mask(size, border).mean())


def spread_over_each_class(labels: Sequence[int], limit: int) -> np.ndarray:
    """Indices of the films kept: `limit` of each true class, evenly spaced over that class's films in the
    data's order (first and last included). Data often comes grouped by source, so the first `limit`
    would all be one source's."""
    labels = np.asarray(labels)
    kept = []
    for c in np.unique(labels):
        films = np.flatnonzero(labels == c)
        kept += films.tolist() if len(films) <= limit else films[np.linspace(0, len(films) - 1, limit).round().astype(int)].tolist()
    return np.array(sorted(kept), dtype=int)


def _mean_with_ci(values: Sequence[float]) -> dict:
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:  # no spread to estimate
        return {"value": mean, "ci95": None, "n": len(values)}
    from scipy import stats  # imported late: only the attention audit needs it

    # Student's t, not the normal quantile: --attention-limit makes a handful of maps per class common,
    # where z = 1.96 held the mean 87% of the time with five. Shares are fractions: clipped to [0, 1].
    half = float(stats.t.ppf(0.975, len(values) - 1)) * float(values.std(ddof=1)) / np.sqrt(len(values))
    return {"value": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)], "n": len(values)}


def _per_class(films: Sequence[tuple], classes: Sequence[str]) -> dict:
    """films: (class index, border share or None for a blank map, peak in border)."""
    per_class = {}
    for index, name in enumerate(classes):
        of_class = [(share, peak) for label, share, peak in films if label == index]
        if not of_class:
            continue
        measured = [(share, peak) for share, peak in of_class if share is not None]
        per_class[name] = {
            "films": len(of_class),
            "blank_maps": len(of_class) - len(measured),
            "border_share": _mean_with_ci([share for share, _ in measured]) if measured else None,
            "peak_in_border": metrics.proportion(sum(peak for _, peak in measured), len(measured)) if measured else None,
        }
    return per_class


def audit(heatmaps: Sequence[Callable[[], np.ndarray]], labels: Sequence[int], classes: Sequence[str],
          border: float = BORDER_FRACTION, sources: Optional[Sequence[str]] = None,
          predicted: Optional[Sequence[int]] = None) -> dict:
    """Per true class (and, given `sources`, per source and true class; given `predicted`, per
    predicted class: where the evidence for each call lies, right or wrong): border share and
    peak-in-border rate of each film's heat map.

    heatmaps: one callable per film returning its square map (computed one at a time: a few hundred
    224 x 224 maps are cheap, their Grad-CAM passes are not, and a progress line can follow each).
    """
    lengths = {"sources": sources, "predictions": predicted}
    if len(heatmaps) != len(labels) or any(v is not None and len(v) != len(labels) for v in lengths.values()):
        raise ValueError(f"{len(heatmaps)} heat maps for {len(labels)} labels" + "".join(
            f" and {len(v)} {name}" for name, v in lengths.items() if v is not None))
    films, size = [], None
    for make, label in zip(heatmaps, labels):
        heat = make()
        size = heat.shape[0]
        share = border_share(heat, border)
        films.append((int(label), share, peak_in_border(heat, border)))  # a blank map's peak is not counted
    result = {
        "border_fraction": border,
        "band_area_share": band_area_share(size, border) if size else None,
        "per_true_class": _per_class(films, classes),
    }
    if predicted is not None:  # e.g. an external source's normals called COVID: where is that evidence?
        result["per_predicted_class"] = _per_class(
            [(int(call), share, peak) for call, (_, share, peak) in zip(predicted, films)], classes)
    if sources is not None:  # a source's own films: does one source's class sit in the band?
        result["per_source"] = {source: _per_class([f for f, s in zip(films, sources) if s == source], classes)
                                for source in sorted(set(sources))}
    return result


def audit_model(model, images: Sequence[bytes], labels: Sequence[int], predicted: Sequence[int],
                classes: Sequence[str], border: float = BORDER_FRACTION, sources: Optional[Sequence[str]] = None,
                progress: Optional[Callable[[str], None]] = None, limit: Optional[int] = None) -> dict:
    """`audit` on a served model's own heat maps (serving/explain.py) of its predicted class for each
    encoded film, with the method and the layers they come from. `limit`: only that many films of each
    true class, spread over the data (a quicker look: a map costs about a second), recorded in the result."""
    from covid_cxr.serving import explain

    if limit is not None:  # before any map is drawn: the maps are the cost
        keep = spread_over_each_class(labels, limit)
        images, labels, predicted = [images[i] for i in keep], np.asarray(labels)[keep], np.asarray(predicted)[keep]
        sources = [sources[i] for i in keep] if sources is not None else None
    explainer = explain.Explainer(model)

    def heat_map(film: int):
        def make():
            if progress and film % 50 == 0:
                progress(f"attention audit: film {film + 1} of {len(images)}")
            return explainer.heatmap(model.transform_images([images[film]])[0], int(predicted[film]))[0]
        return make

    result = audit([heat_map(i) for i in range(len(images))], labels, classes, border, sources, predicted)
    result.update(method=explainer.method, target=explainer.target_layer, limit=limit)
    return result


def method_text(result: dict) -> str:
    """"grad-cam at layer conv2" ("at layers a + b": an averaged ensemble's members); the method alone
    when no layer was attributed to (gradient saliency) or the result predates the layer's record."""
    target = result.get("target")
    if not target:
        return result["method"]
    return f"{result['method']} at layer{'s' if ' + ' in target else ''} {target}"


def _films(n: int) -> str:
    return f"{n} film" if n == 1 else f"{n} films"


def _class_line(name: str, entry: dict) -> str:
    share, peak = entry["border_share"], entry["peak_in_border"]
    if share is None:
        return f"{name}: {_films(entry['films'])}, every map blank"
    interval = f" [{share['ci95'][0]:.2f}, {share['ci95'][1]:.2f}]" if share["ci95"] else ""
    return (f"{name}: {_films(entry['films'])}: border share {share['value']:.2f}{interval}; "
            f"peak in border {peak['k']}/{peak['n']} = {peak['value']:.2f} "
            f"[{peak['ci95'][0]:.2f}, {peak['ci95'][1]:.2f}]; blank maps {entry['blank_maps']}")


def summary_lines(result: dict) -> list[str]:
    """The audit as lines for a terminal."""
    area = result["band_area_share"]
    lines = [f"outer {result['border_fraction']:.0%} band: {area:.0%} of the film's area" if area is not None
             else "no heat maps"]
    if result.get("limit"):  # the counts below are not the data's
        lines[0] += f"; films: {result['limit']} of each true class, spread over the data"
    lines += [f"  {_class_line(name, entry)}" for name, entry in result["per_true_class"].items()]
    lines += [f"  called {_class_line(name, entry)}" for name, entry in (result.get("per_predicted_class") or {}).items()]
    for source, per_class in (result.get("per_source") or {}).items():
        lines += [f"    {source} {_class_line(name, entry)}" for name, entry in per_class.items()]
    return lines
