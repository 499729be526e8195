"""Deterministic synthetic chest radiographs: the embedded default dataset of the demo and tests.

SYNTHETIC, NOT MEDICAL. The pictures are cartoons of a frontal chest film: a thorax with two lung
fields, spine, ribs and heart, on which each class draws its own opacity pattern —
  normal:    clear lung fields;
  covid:     bilateral, peripheral, lower-zone patchy ground-glass opacities;
  pneumonia: one dense lobar consolidation in one lung.
Everything a real model could cheat on is drawn independently of the class: black borders and bars,
image size, exposure, noise, view, sex, age and the (fake) source. Patients have 1-3 images with the
same anatomy, so patient-grouped splitting matters here as it does in real data.

The output directory has exactly the layout `covid-cxr curate` writes (see data/writer.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
from PIL import Image

from covid_cxr.data import features
from covid_cxr.data.writer import DatasetWriter

SOURCES = ("synthetic-a", "synthetic-b")


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry, reused for each of that patient's images."""

    width: float  # thorax half-width as a fraction of the image
    lung_height: float
    heart_size: float
    rib_phase: float


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys / h, xs / w


def _ellipse(ys, xs, cy, cx, ry, rx, softness=0.05) -> np.ndarray:
    d = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
    return 1.0 / (1.0 + np.exp(np.clip((d - 1.0) / softness, -50, 50)))


def _blob(ys, xs, cy, cx, r) -> np.ndarray:
    return np.exp(-(((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r)))


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    return Anatomy(rng.uniform(0.36, 0.42), rng.uniform(0.3, 0.36), rng.uniform(0.1, 0.14), rng.uniform(0, 2))


def draw_radiograph(finding: str, anatomy: Anatomy, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """One synthetic film, uint8 grayscale of shape `size`, borders included."""
    h, w = size
    ys, xs = _grid(h, w)
    thorax = _ellipse(ys, xs, 0.55, 0.5, 0.48, anatomy.width + 0.05)
    image = 0.15 + 0.45 * thorax
    lungs = np.zeros_like(image)
    for side in (-1, 1):
        lungs = np.maximum(lungs, _ellipse(ys, xs, 0.5, 0.5 + side * 0.19, anatomy.lung_height, 0.14))
    image -= 0.30 * lungs
    image += 0.25 * np.exp(-((xs - 0.5) / 0.035) ** 2) * thorax  # spine
    ribs = 0.5 + 0.5 * np.sin((ys * 28 + np.abs(xs - 0.5) * 6 + anatomy.rib_phase) * np.pi)
    image += 0.06 * ribs * lungs
    image += 0.22 * _ellipse(ys, xs, 0.62, 0.45, anatomy.heart_size, anatomy.heart_size * 1.2)  # heart

    if finding == features.COVID:
        # Bilateral, peripheral, lower zones: many soft ground-glass patches on both sides.
        for side in (-1, 1):
            for _ in range(rng.integers(4, 7)):
                cy = rng.uniform(0.55, 0.78)
                cx = 0.5 + side * rng.uniform(0.24, 0.31)
                image += 0.24 * _blob(ys, xs, cy, cx, rng.uniform(0.035, 0.06)) * lungs
    elif finding == features.PNEUMONIA:
        # Unilateral lobar consolidation: one dense, larger, sharper region.
        side = rng.choice((-1, 1))
        cy = rng.uniform(0.35, 0.65)
        image += 0.38 * _ellipse(ys, xs, cy, 0.5 + side * 0.2, rng.uniform(0.09, 0.14), 0.1, 0.15) * lungs
    elif finding == features.OTHER_OPACITY:
        image += 0.2 * _blob(ys, xs, rng.uniform(0.3, 0.7), 0.5 + rng.choice((-1, 1)) * 0.2, 0.05) * lungs

    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)  # exposure
    image += rng.normal(0, 0.03, image.shape)  # quantum noise
    image = np.clip(image, 0, 1)
    _draw_borders(image, rng)
    return (image * 255).astype(np.uint8)


def _draw_borders(image: np.ndarray, rng: np.random.Generator) -> None:
    """Black margins and an occasional burnt-in white marker: source artefacts, class-independent."""
    h, w = image.shape
    top, bottom = (int(h * rng.uniform(0, 0.12)) for _ in range(2))
    left, right = (int(w * rng.uniform(0, 0.12)) for _ in range(2))
    image[:top] = 0
    image[h - bottom:] = 0
    image[:, :left] = 0
    image[:, w - right:] = 0
    if rng.random() < 0.3:
        y, x = int(h * rng.uniform(0.05, 0.2)), int(w * rng.uniform(0.05, 0.7))
        image[y:y + max(2, h // 30), x:x + w // 6] = 1.0


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG", optimize=False)
    return out.getvalue()


def patient_group(seed: int, finding: str, index: int) -> str:
    """The pseudonym, and split group, of the ``index``-th synthetic patient with ``finding``: the
    first n patients of a larger dataset are those of a smaller one, so they land in the same splits."""
    return hashlib.sha256(f"synthetic:{seed}:{finding}:{index}".encode()).hexdigest()[:16]


def generate(out_dir: str, task: str = "covid-vs-normal", patients_per_class: int = 60, seed: int = 0) -> dict:
    """Writes a curated-format synthetic dataset for `task` and returns its summary."""
    task_obj = features.get_task(task)
    findings = [f for f in features.FINDINGS if task_obj.class_of(f) and f != features.OTHER_OPACITY]
    rng = np.random.default_rng(seed)
    with DatasetWriter(out_dir, task) as writer:  # an interrupted run leaves no partial shards
        for finding in findings:
            label = task_obj.class_of(finding)
            for p in range(patients_per_class):
                patient = patient_group(seed, finding, p)
                anatomy = random_anatomy(rng)
                source, sex = rng.choice(SOURCES), rng.choice(("M", "F"))
                age = int(rng.integers(18, 90))
                for i in range(int(rng.integers(1, 4))):
                    size = (int(rng.integers(160, 256)), int(rng.integers(160, 256)))
                    png = _png(draw_radiograph(finding, anatomy, rng, size))
                    record = features.Record(
                        png=png, label=label, label_index=task_obj.classes.index(label), patient_id=patient,
                        group=patient, source=str(source), view=str(rng.choice(("PA", "AP"))), sex=str(sex), age=age,
                    )
                    writer.add(record, source_ref=f"{finding}/{patient}-{i}.png",
                               image_hash=hashlib.sha256(png).hexdigest()[:16])
        # Settings in curation's vocabulary, so `predict` prepares new images the way these were made:
        # the synthetic borders are class-independent and deliberately left in.
        settings = {"task": task, "max_side": 256, "crop": False, "equalize": "none"}
        return writer.close({"synthetic": True, "seed": seed, "patients_per_class": patients_per_class,
                             "settings": settings})
