"""Grad-CAM and saliency on a hand-weighted model whose right answer is known, and the overlay drawing."""
import io

import numpy as np
import pytest
from PIL import Image

from covid_cxr.serving import explain

SIZE = 8
HALVES = np.concatenate([np.zeros((SIZE, SIZE // 2, 1)), np.ones((SIZE, SIZE // 2, 1))], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def known_model():
    """image x -> identity 1x1 conv -> channels (x, 1 - x) -> ReLU -> mean -> sigmoid(2 mean(x) - mean(1 - x)).

    Channel x raises P(COVID) and channel 1 - x lowers it, so Grad-CAM for COVID lights the bright half
    (map ReLU(3x - 1)) and for the other class the dark half; the gradient is twice as large on the
    bright half as on the dark one."""
    import tf_keras as keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(1, 1, name="identity")(inputs)
    x = keras.layers.Conv2D(2, 1, name="conv")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.get_layer("identity").set_weights([np.ones((1, 1, 1, 1)), np.zeros(1)])
    model.get_layer("conv").set_weights([np.array([[[[1.0, -1.0]]]]), np.array([0.0, 1.0])])
    model.layers[-1].set_weights([np.array([[2.0], [-1.0]]), np.zeros(1)])
    return model


def _explainer(model, grad_cam: bool):
    explainer = explain.Explainer(serving_model=None)
    explainer._ready, explainer._keras = True, model  # as _setup leaves it after loading the SavedModel
    if grad_cam:
        plan = explain.find_gradcam_target(model)
        explainer._grad_model, explainer.target_layer = plan, plan.layer_name
    return explainer


def test_the_class_score_is_the_predicted_class_probability():
    assert explain._class_score(np.array([[0.8]]), 1).numpy() == pytest.approx([0.8])
    assert explain._class_score(np.array([[0.8]]), 0).numpy() == pytest.approx([0.2])  # sigmoid: 1 - p
    assert explain._class_score(np.array([[0.1, 0.2, 0.7]]), 1).numpy() == pytest.approx([0.2])


def test_grad_cam_attributes_to_the_last_convolutions_activation(known_model):
    assert explain.find_gradcam_target(known_model).layer_name == "relu"  # not "identity", not "conv" before it


def test_grad_cam_lights_the_evidence_for_the_class_explained(known_model):
    explainer = _explainer(known_model, grad_cam=True)
    covid, method = explainer.heatmap(HALVES, 1)
    assert method == explain.GRAD_CAM and covid.shape == (SIZE, SIZE)
    np.testing.assert_allclose(covid, HALVES[..., 0], atol=1e-5)  # ReLU(3x - 1), scaled to a maximum of 1
    other, _ = explainer.heatmap(HALVES, 0)
    np.testing.assert_allclose(other, 1 - HALVES[..., 0], atol=1e-5)


def test_saliency_is_the_gradients_size_whatever_its_sign(known_model):
    explainer = _explainer(known_model, grad_cam=False)
    for class_index in (0, 1):  # the other class's score falls where COVID's rises: the same map
        heat, method = explainer.heatmap(HALVES, class_index)
        assert method == explain.SALIENCY and heat.max() == pytest.approx(1.0)
        # Scaled by the 99th percentile: the dark half, half the gradient, is about 0.5, not clipped to 1.
        assert heat[:, :2].mean() == pytest.approx(0.5, abs=0.05) and heat[:, -2:].mean() == pytest.approx(1.0, abs=0.05)


def test_the_overlay_colours_the_heat_under_a_caption_bar():
    gray = np.full((20, 10), 128, dtype=np.uint8)  # taller than wide: the map is stretched onto it
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[:2] = 1.0  # the top half of the film
    picture = np.asarray(Image.open(io.BytesIO(explain.overlay_png(gray, heat, "covid 0.900"))).convert("RGB"))
    bar = 14
    assert picture.shape == (20 + bar, 10, 3)
    assert picture[:bar].max(axis=2).mean() < 128  # the caption bar: black with white text
    top, bottom = picture[bar + 1].astype(int), picture[-1].astype(int)
    assert (bottom == 128).all()  # no heat: the film as it is
    red = np.round(255 * (0.4 * 128 / 255 + 0.6 * np.array([0.5, 0.0, 0.0])))  # jet(1.0) at opacity 0.6
    np.testing.assert_allclose(top[0], red, atol=1)


def test_the_caption_names_the_label_its_probability_and_the_method(known_model, monkeypatch, tmp_path):
    class Serving:
        def transform_images(self, pngs):
            return HALVES[None]

    explainer = _explainer(known_model, grad_cam=True)
    explainer.serving_model = Serving()
    captions = []
    monkeypatch.setattr(explain.images, "decode_png", lambda png: np.zeros((SIZE, SIZE), dtype=np.uint8))
    monkeypatch.setattr(explain, "overlay_png", lambda gray, heat, caption: captions.append(caption) or b"png")
    prediction = {"label_index": 1, "label": "covid", "probabilities": {"covid": 0.73106, "normal": 0.26894}}
    assert explainer.write_overlay(b"film", prediction, str(tmp_path / "a.png")) == explain.GRAD_CAM
    assert captions == ["covid 0.731 | Grad-CAM (relu)"] and (tmp_path / "a.png").read_bytes() == b"png"
    explainer._grad_model = None
    explainer.write_overlay(b"film", dict(prediction, probabilities={}), str(tmp_path / "b.png"))
    assert captions[-1] == "covid | gradient saliency"
    # The heat map's own one-line reason is kept as it is, not wrapped in another.
    monkeypatch.setattr(explainer, "heatmap", lambda image_xf, class_index: (_ for _ in ()).throw(
        explain.ExplainError("the model is not differentiable with respect to its input")))
    with pytest.raises(explain.ExplainError, match="^the model is not differentiable with respect to its input$"):
        explainer.write_overlay(b"film", prediction, str(tmp_path / "c.png"))


def test_saliency_differentiates_a_plain_saved_model_that_answers_with_a_dict(known_model):
    """When tf_keras cannot load the model: its SavedModel's __call__ (without a training argument here)."""
    class Loaded:
        def __call__(self, x):
            return {"probabilities": known_model(x)}

    class Serving:
        _loaded = Loaded()

    explainer = explain.Explainer(Serving())
    explainer._ready = True
    heat, method = explainer.heatmap(HALVES, 1)
    assert method == explain.SALIENCY
    np.testing.assert_allclose(heat, _explainer(known_model, grad_cam=False).heatmap(HALVES, 1)[0])
