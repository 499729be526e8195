"""Grad-CAM and saliency on a hand-weighted model whose right answer is known, and the overlay drawing."""
import io

import numpy as np
import pytest
from PIL import Image

from covid_cxr.serving import explain

SIZE = 8
HALVES = np.concatenate([np.zeros((SIZE, SIZE // 2, 1)), np.ones((SIZE, SIZE // 2, 1))], axis=1).astype(np.float32)


def _known(downsample=False, max_pool=False, three_classes=False):
    """image x -> identity 1x1 conv -> channels (x, 1 - x) -> ReLU -> mean -> sigmoid(2 mean(x) - mean(1 - x)).

    Channel x raises P(COVID) and channel 1 - x lowers it, so Grad-CAM for COVID lights the bright half
    (map ReLU(3x - 1)) and for the other class the dark half; the gradient is twice as large on the
    bright half as on the dark one. `downsample`: the film is averaged 2 x 2 first (the map is half the
    film's size); `max_pool`: max-pooled 2 x 2 after the ReLU (the gradient reaches one pixel a block);
    `three_classes`: a softmax over (normal, pneumonia, covid) whose only non-zero logit is COVID's, as
    above, so the other two classes' maps are both the dark half."""
    import tf_keras as keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.AveragePooling2D(2)(inputs) if downsample else inputs
    x = keras.layers.Conv2D(1, 1, name="identity")(x)
    x = keras.layers.Conv2D(2, 1, name="conv")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x) if max_pool else x
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x) if three_classes else keras.layers.Dense(
        1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("identity").set_weights([np.ones((1, 1, 1, 1)), np.zeros(1)])
    model.get_layer("conv").set_weights([np.array([[[[1.0, -1.0]]]]), np.array([0.0, 1.0])])
    covid = np.array([[2.0], [-1.0]])
    model.layers[-1].set_weights([np.pad(covid, ((0, 0), (2, 0))), np.zeros(3)] if three_classes
                                 else [covid, np.zeros(1)])
    return model


@pytest.fixture(scope="module")
def known_model():
    return _known()


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
    # Two softmax columns are two classes, not a sigmoid's P(COVID) and a spare column.
    assert explain._class_score(np.array([[0.3, 0.7]]), 1).numpy() == pytest.approx([0.7])
    assert explain._class_score(np.array([[0.3, 0.7]]), 0).numpy() == pytest.approx([0.3])


def test_grad_cam_attributes_to_the_last_convolutions_activation(known_model):
    assert explain.find_gradcam_target(known_model).layer_name == "relu"  # not "identity", not "conv" before it


# Left/right halves and top/bottom ones (the map is not flipped); after max pooling the gradient is
# averaged over the map, not taken pixel by pixel.
@pytest.mark.parametrize("film", [HALVES, HALVES.transpose(1, 0, 2)], ids=["left-right", "top-bottom"])
@pytest.mark.parametrize("max_pool", [False, True])
def test_grad_cam_lights_the_evidence_for_the_class_explained(film, max_pool):
    explainer = _explainer(_known(max_pool=max_pool), grad_cam=True)
    covid, method = explainer.heatmap(film, 1)
    assert method == explain.GRAD_CAM and covid.shape == (SIZE, SIZE)
    np.testing.assert_allclose(covid, film[..., 0], atol=1e-5)  # ReLU(3x - 1), scaled to a maximum of 1
    other, _ = explainer.heatmap(film, 0)
    np.testing.assert_allclose(other, 1 - film[..., 0], atol=1e-5)


def test_grad_cam_without_positive_evidence_is_a_blank_map(known_model):
    heat, _ = _explainer(known_model, grad_cam=True).heatmap(np.zeros_like(HALVES), 1)  # no bright pixel at all
    np.testing.assert_array_equal(heat, np.zeros((SIZE, SIZE)))


def test_a_grad_cam_map_smaller_than_the_film_is_upsampled_bilinearly():
    explainer = _explainer(_known(downsample=True), grad_cam=True)
    heat, _ = explainer.heatmap(HALVES, 1)
    # The 4 x 4 map's rows are (0, 0, 1, 1); half-pixel bilinear to 8 blends the two middle columns.
    np.testing.assert_allclose(heat, np.tile([0, 0, 0, 0.25, 0.75, 1, 1, 1], (SIZE, 1)), atol=1e-5)
    # Scaled before it is upsampled: a one-pixel peak spreads over 4 pixels at 0.75 x 0.75, not 1.
    film = np.zeros_like(HALVES)
    film[2:4, 2:4] = 1.0
    spread = np.array([0, 0.25, 0.75, 0.75, 0.25, 0, 0, 0])
    np.testing.assert_allclose(explainer.heatmap(film, 1)[0], np.outer(spread, spread), atol=1e-5)


def test_no_gradient_to_the_target_is_a_one_line_error():
    import tensorflow as tf

    explainer = explain.Explainer(serving_model=None)
    explainer._ready = True
    explainer._grad_model = lambda x: (tf.ones((1, 2, 2, 1)), tf.constant([[0.5]]))  # the score ignores it
    with pytest.raises(explain.ExplainError, match="^no gradient from the class score to the last convolution$"):
        explainer.heatmap(HALVES, 1)


def test_saliency_is_the_gradients_size_whatever_its_sign(known_model):
    explainer = _explainer(known_model, grad_cam=False)
    for class_index in (0, 1):  # the other class's score falls where COVID's rises: the same map
        heat, method = explainer.heatmap(HALVES, class_index)
        assert method == explain.SALIENCY == explainer.method and heat.max() == pytest.approx(1.0)
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
    np.testing.assert_array_equal(top[0], red)  # rounded, not truncated


class _HalvesServing:
    def transform_images(self, pngs):
        return HALVES[None]


def _drawn(explainer, monkeypatch):
    """(captions, heat maps) that `explainer.write_overlay` draws from now on, for the film HALVES."""
    explainer.serving_model = _HalvesServing()
    captions, heats = [], []
    monkeypatch.setattr(explain.images, "decode_png", lambda png: np.zeros((SIZE, SIZE), dtype=np.uint8))
    monkeypatch.setattr(explain, "overlay_png",
                        lambda gray, heat, caption: captions.append(caption) or heats.append(heat) or b"png")
    return captions, heats


COVID_ROW = {"label_index": 1, "label": "covid", "probabilities": {"covid": 0.73106, "normal": 0.26894}}


def test_the_caption_names_the_label_its_probability_and_the_method(known_model, monkeypatch, tmp_path):
    explainer = _explainer(known_model, grad_cam=True)
    captions, heats = _drawn(explainer, monkeypatch)
    prediction = COVID_ROW
    assert explainer.write_overlay(b"film", prediction, str(tmp_path / "a.png")) == explain.GRAD_CAM
    assert captions == ["covid 0.731 | Grad-CAM (relu)"] and (tmp_path / "a.png").read_bytes() == b"png"
    # The map explains the predicted class: the other label lights the other half.
    explainer.write_overlay(b"film", dict(prediction, label_index=0, label="normal"), str(tmp_path / "n.png"))
    assert captions[-1] == "normal 0.269 | Grad-CAM (relu)"
    np.testing.assert_allclose(heats[0], HALVES[..., 0], atol=1e-5)
    np.testing.assert_allclose(heats[-1], 1 - HALVES[..., 0], atol=1e-5)
    # Any other failure (here a missing folder) is one line naming its type, not a traceback.
    with pytest.raises(explain.ExplainError, match=r"^FileNotFoundError: [^\n]*missing[^\n]*$"):
        explainer.write_overlay(b"film", prediction, str(tmp_path / "missing" / "d.png"))
    explainer._grad_model = None
    explainer.write_overlay(b"film", dict(prediction, probabilities={}), str(tmp_path / "b.png"))
    assert captions[-1] == "covid | gradient saliency"
    # The heat map's own one-line reason is kept as it is, not wrapped in another.
    monkeypatch.setattr(explainer, "heatmap", lambda image_xf, class_index: (_ for _ in ()).throw(
        explain.ExplainError("the model is not differentiable with respect to its input")))
    with pytest.raises(explain.ExplainError, match="^the model is not differentiable with respect to its input$"):
        explainer.write_overlay(b"film", prediction, str(tmp_path / "c.png"))


@pytest.mark.parametrize("takes_training", [False, True])
def test_saliency_differentiates_a_plain_saved_model_that_answers_with_a_dict(known_model, takes_training):
    """When tf_keras cannot load the model: its SavedModel's __call__, in inference mode when it takes
    a training argument."""
    calls = []

    class Loaded:
        def __call__(self, x, **kwargs):
            if kwargs and not takes_training:
                raise TypeError("unexpected keyword argument 'training'")
            calls.append(kwargs)
            return {"probabilities": known_model(x)}

    class Serving:
        _loaded = Loaded()

    explainer = explain.Explainer(Serving())
    explainer._ready = True
    heat, method = explainer.heatmap(HALVES, 1)
    assert method == explain.SALIENCY and calls == [{"training": False} if takes_training else {}]
    np.testing.assert_allclose(heat, _explainer(known_model, grad_cam=False).heatmap(HALVES, 1)[0])


def _tiny(build):
    """A model from `build(keras, inputs) -> outputs` on SIZE x SIZE x 1 films, its weights seeded."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    return keras.Model(inputs, build(keras, inputs))


def _head(keras, x):
    return keras.layers.Dense(1, activation="sigmoid", name="out")(keras.layers.GlobalAveragePooling2D(name="gap")(x))


def _pooled_after_follow_layers(keras, x):
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    return _head(keras, keras.layers.MaxPooling2D(name="pool")(x))


def _conv1d_after_the_last_2d_conv(keras, x):
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(x)
    x = keras.layers.Reshape((SIZE * SIZE, 2), name="flat")(x)
    x = keras.layers.Conv1D(2, 3, padding="same", name="conv1d")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="out")(keras.layers.GlobalAveragePooling1D()(x))


def _nested_model_without_convolution(keras, x):
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(x)
    inner_in = keras.Input((SIZE, SIZE, 2))
    dense_head = keras.Model(inner_in, keras.layers.Dense(3)(inner_in), name="per_pixel_dense")
    return _head(keras, dense_head(x))


def _nested_backbone(keras, x):
    inner_in = keras.Input((SIZE, SIZE, 1))
    inner = keras.layers.BatchNormalization(name="inner_bn")(keras.layers.Conv2D(2, 3, padding="same")(inner_in))
    backbone = keras.Model(inner_in, inner, name="backbone")
    backbone.get_layer("inner_bn").set_weights([np.full(2, 2.0), np.full(2, 0.5), np.full(2, -1.0), np.full(2, 4.0)])
    return _head(keras, keras.layers.Dropout(0.5, name="drop")(backbone(x)))


@pytest.mark.parametrize("build, target", [
    (_pooled_after_follow_layers, "relu"),  # through BatchNorm and ReLU, stopping before pooling
    (_conv1d_after_the_last_2d_conv, "conv"),  # a 3-D convolution output is no Grad-CAM target
    (_nested_model_without_convolution, "conv"),  # a nested model without a convolution is no backbone
    (_nested_backbone, "backbone"),
])
def test_the_grad_cam_plan_targets_the_last_4d_convolution_and_computes_the_models_prediction(build, target):
    model = _tiny(build)
    plan = explain.find_gradcam_target(model)
    assert plan.layer_name == target
    # Inference mode all through (BatchNorm's moving statistics, no dropout), as the model predicts.
    activations, predictions = plan(HALVES[None] * 0.8 + 0.1)
    np.testing.assert_allclose(predictions, model(HALVES[None] * 0.8 + 0.1, training=False), rtol=1e-5)
    assert activations.shape.rank == 4


def _residual_after_the_last_conv(keras, x):
    return _head(keras, keras.layers.Add(name="add")([keras.layers.Conv2D(1, 1, name="conv")(x), x]))


def _two_pooled_branches(keras, x):
    first = keras.layers.Conv2D(2, 1, name="first")(x)
    second = keras.layers.Conv2D(2, 1, name="second")(first)
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"gap_{i}")(t) for i, t in enumerate((first, second))]
    return keras.layers.Dense(1, activation="sigmoid")(keras.layers.Concatenate()(pooled))


@pytest.mark.parametrize("build", [_residual_after_the_last_conv, _two_pooled_branches])
def test_no_grad_cam_plan_when_the_layers_after_the_last_convolution_are_not_a_chain(build):
    assert explain.find_gradcam_target(_tiny(build)) is None


class _Saved:
    path = "/nowhere/serving_model"


def test_setup_loads_the_model_once_and_keeps_the_grad_cam_target(known_model, monkeypatch):
    import tf_keras

    loads = []
    monkeypatch.setattr(tf_keras.models, "load_model", lambda path, compile: loads.append((path, compile)) or known_model)
    explainer = explain.Explainer(_Saved())
    assert explainer.method == explain.GRAD_CAM and explainer.target_layer == "relu" and explainer.load_error is None
    explainer.heatmap(HALVES, 1)
    explainer.heatmap(HALVES, 0)
    assert loads == [("/nowhere/serving_model", False)]


def test_setup_falls_back_to_saliency_when_the_target_search_fails(known_model, monkeypatch, caplog):
    import tf_keras

    monkeypatch.setattr(tf_keras.models, "load_model", lambda path, compile: known_model)
    monkeypatch.setattr(explain, "find_gradcam_target", lambda model: (_ for _ in ()).throw(KeyError("odd graph")))
    explainer = explain.Explainer(_Saved())
    with caplog.at_level("WARNING", logger=explain.__name__):
        assert explainer.method == explain.SALIENCY and explainer.target_layer is None
    assert "looking for the layer to attribute to failed (KeyError: 'odd graph')" in caplog.text
    assert explainer.heatmap(HALVES, 1)[1] == explain.SALIENCY


def test_setup_falls_back_to_saliency_and_records_why_when_tf_keras_cannot_load(monkeypatch):
    import tf_keras

    monkeypatch.setattr(tf_keras.models, "load_model", lambda path, compile: (_ for _ in ()).throw(
        ValueError("Unknown layer: 'SomethingCustom'")))
    explainer = explain.Explainer(_Saved())
    assert explainer.method == explain.SALIENCY and explainer.load_error == "ValueError"
    assert explainer._keras is None and explainer.target_layer is None


def test_saliency_without_any_gradient_is_a_blank_map():
    """A film every ReLU cuts off: the gradient is zero everywhere, and so is the map (not 0 / 0)."""
    model = _tiny(lambda keras, x: keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))))
    heat, method = _explainer(model, grad_cam=False).heatmap(-np.ones_like(HALVES), 1)
    assert method == explain.SALIENCY
    np.testing.assert_array_equal(heat, np.zeros((SIZE, SIZE)))


def test_saliency_is_smoothed_with_the_films_size_and_scaled_by_its_99th_percentile():
    """One pixel carries the whole gradient (a max-pooled model): on a 128-pixel film the map is a
    blob of a few pixels' radius (sigma 128 / 64), saturated around the pixel because its 99th
    percentile is far below its peak, and nothing beyond the blur."""
    import tf_keras as keras

    size = 128
    inputs = keras.Input((size, size, 1))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalMaxPooling2D()(inputs)))
    film = np.zeros((size, size, 1), dtype=np.float32)
    film[64, 64] = 1.0
    heat, _ = _explainer(model, grad_cam=False).heatmap(film, 1)
    assert heat[64, 64] == heat[64, 68] == heat[60, 64] == 1.0  # 4 pixels away: still saturated
    assert heat[64, 80] == heat[40, 64] == 0.0


def test_heat_map_names_differ_on_a_case_insensitive_disk_whichever_case_comes_first():
    assert explain.output_names(["x/A.png", "y/a.png", "z/A.PNG"]) == ["A.heatmap.png", "a-2.heatmap.png",
                                                                       "A-3.heatmap.png"]


def test_the_grad_cam_plan_follows_the_models_own_graph_when_another_model_shares_its_layers():
    """Layers reused by a second model get a node in each: each model's plan takes its own."""
    import tf_keras as keras

    first = _known()
    inputs = keras.Input((SIZE, SIZE, 1))
    x = first.get_layer("relu")(first.get_layer("conv")(first.get_layer("identity")(inputs)))
    second = keras.Model(inputs, first.layers[-1](first.layers[-2](x)))
    for model in (first, second):
        plan = explain.find_gradcam_target(model)
        assert plan.layer_name == "relu"
        np.testing.assert_allclose(plan(HALVES[None])[1], first(HALVES[None]), rtol=1e-6)


def _averaged(*members):
    """An ensemble as trainer/models.average_ensemble builds it: each member model on the input, averaged."""
    import tf_keras as keras

    inputs = keras.Input((SIZE, SIZE, 1))
    return keras.Model(inputs, keras.layers.Average()([member(inputs) for member in members]))


def _dark_is_covid():
    """_known with its channels swapped: the dark half raises P(COVID), so its map is the dark half."""
    model = _known()
    model.get_layer("conv").set_weights([np.array([[[[-1.0, 1.0]]]]), np.array([1.0, 0.0])])
    return model


def test_an_averaged_ensembles_grad_cam_is_the_mean_of_its_members_maps_scaled_to_a_peak_of_1():
    ensemble = _averaged(_known(), _known(downsample=True))
    plan = explain.find_gradcam_target(ensemble)
    assert isinstance(plan, explain.AveragedPlans) and plan.layer_name == "relu + relu"
    for member, sub_plan in zip(ensemble.layers[1:3], plan.members):  # each member's own prediction
        np.testing.assert_allclose(sub_plan(HALVES[None])[1], member(HALVES[None]), rtol=1e-6)
    heat, method = _explainer(ensemble, grad_cam=True).heatmap(HALVES, 1)
    upsampled = np.tile([0, 0, 0, 0.25, 0.75, 1, 1, 1], (SIZE, 1))  # the downsampled member's map
    assert method == explain.GRAD_CAM
    np.testing.assert_allclose(heat, (HALVES[..., 0] + upsampled) / 2, atol=1e-5)
    # Members that disagree: each half is lit by one of them, 0.5 in the mean, scaled back to 1.
    heat, _ = _explainer(_averaged(_known(), _dark_is_covid()), grad_cam=True).heatmap(HALVES, 1)
    np.testing.assert_allclose(heat, np.ones((SIZE, SIZE)), atol=1e-5)
    # Each of three members counts a third: (bright + upsampled + dark) / 3, scaled back to a peak of 1.
    three = _averaged(_known(), _known(downsample=True), _dark_is_covid())
    np.testing.assert_allclose(_explainer(three, grad_cam=True).heatmap(HALVES, 1)[0], (1 + upsampled) / 2, atol=1e-5)


def test_a_three_class_ensembles_grad_cam_is_the_mean_of_its_members_maps_of_the_predicted_softmax_class():
    ensemble = _averaged(_known(three_classes=True), _known(downsample=True, three_classes=True))
    for member, plan in zip(ensemble.layers[1:3], explain.find_gradcam_target(ensemble).members):
        np.testing.assert_allclose(plan(HALVES[None])[1], member(HALVES[None]), rtol=1e-6)  # all 3 columns
    explainer = _explainer(ensemble, grad_cam=True)
    upsampled = np.tile([0, 0, 0, 0.25, 0.75, 1, 1, 1], (SIZE, 1))
    np.testing.assert_allclose(explainer.heatmap(HALVES, 2)[0], (HALVES[..., 0] + upsampled) / 2, atol=1e-5)
    # The other classes' probabilities fall as COVID's rises: each member lights its dark half for them.
    for other in (0, 1):
        np.testing.assert_allclose(explainer.heatmap(HALVES, other)[0], (2 - HALVES[..., 0] - upsampled) / 2,
                                   atol=1e-5)


def test_an_averaged_ensemble_of_one_model_has_that_models_map():
    import tf_keras as keras

    inputs = keras.Input((SIZE, SIZE, 1))
    one = keras.Model(inputs, keras.layers.Average()([_known(downsample=True)(inputs)]))
    heat, method = _explainer(one, grad_cam=True).heatmap(HALVES, 1)
    assert method == explain.GRAD_CAM
    np.testing.assert_allclose(heat, np.tile([0, 0, 0, 0.25, 0.75, 1, 1, 1], (SIZE, 1)), atol=1e-5)


def test_setup_of_an_ensemble_says_its_map_is_the_mean_of_its_members(monkeypatch, caplog):
    import tf_keras

    ensemble = _averaged(_known(), _tiny(_nested_backbone))
    monkeypatch.setattr(tf_keras.models, "load_model", lambda path, compile: ensemble)
    explainer = explain.Explainer(_Saved())
    with caplog.at_level("INFO", logger=explain.__name__):  # the members' layers in the members' order
        assert explainer.method == explain.GRAD_CAM and explainer.target_layer == "relu + backbone"
    assert "explanations use Grad-CAM: the mean of the 2 members' maps (relu + backbone)" in caplog.text


def test_an_ensembles_caption_counts_its_members_instead_of_naming_their_layers(monkeypatch, tmp_path):
    explainer = _explainer(_averaged(_known(), _known(), _known()), grad_cam=True)
    captions, _ = _drawn(explainer, monkeypatch)
    assert explainer.write_overlay(b"film", COVID_ROW, str(tmp_path / "a.png")) == explain.GRAD_CAM
    assert captions == ["covid 0.731 | Grad-CAM, mean of 3 models"]


def test_an_ensemble_with_a_member_without_convolution_or_not_averaging_its_members_has_no_grad_cam_plan():
    import tf_keras as keras

    dense = _tiny(lambda keras, x: keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(x)))
    assert explain.find_gradcam_target(_averaged(_known(), dense)) is None
    inputs = keras.Input((SIZE, SIZE, 1))  # members averaged, then another layer: not the served mean
    mean = keras.layers.Average()([_known()(inputs), _known()(inputs)])
    assert explain.find_gradcam_target(keras.Model(inputs, keras.layers.Dense(1)(mean))) is None
    summed = keras.layers.Add()([_known()(inputs), _known()(inputs)])  # not a mean of probabilities
    assert explain.find_gradcam_target(keras.Model(inputs, summed)) is None
    # A member fed a transformed input, not the model's input, is not a member of an averaged ensemble.
    shifted = keras.layers.Rescaling(1.0, offset=0.1)(inputs)
    assert explain.find_gradcam_target(keras.Model(inputs, keras.layers.Average()(
        [_known()(inputs), _known()(shifted)]))) is None
    # Averaged layers are no member models; a model of two films is no ensemble of one; nor is a bare input.
    pooled = keras.layers.Average()([keras.layers.GlobalAveragePooling2D()(inputs),
                                     keras.layers.GlobalMaxPooling2D()(inputs)])
    assert explain.find_gradcam_target(keras.Model(inputs, pooled)) is None
    other = keras.Input((SIZE, SIZE, 1))
    assert explain.find_gradcam_target(keras.Model([inputs, other], keras.layers.Average()(
        [_known()(inputs), _known()(other)]))) is None
    assert explain.find_gradcam_target(keras.Model(inputs, inputs)) is None


def test_a_saved_and_reloaded_ensemble_keeps_its_members_grad_cam(tmp_path):
    """The served model is a SavedModel revived by tf_keras: its members are revived nested models."""
    import tf_keras as keras

    _averaged(_known(), _known(downsample=True)).save(str(tmp_path / "model"), save_format="tf")
    revived = keras.models.load_model(str(tmp_path / "model"), compile=False)
    heat, method = _explainer(revived, grad_cam=True).heatmap(HALVES, 1)
    assert method == explain.GRAD_CAM
    np.testing.assert_allclose(heat, (HALVES[..., 0] + np.tile([0, 0, 0, 0.25, 0.75, 1, 1, 1], (SIZE, 1))) / 2,
                               atol=1e-5)
