"""Heat-map explanations for `covid-cxr predict --explain`: Grad-CAM, or gradient saliency as fallback.

How an explanation is made for one image (the PNG the model was given):
1. the model's own ``transform_features`` signature turns the PNG into ``image_xf`` [1, S, S, 1], so
   the explanation sees exactly the pixels the prediction saw;
2. the SavedModel is loaded a second time with tf_keras (``tf_keras.models.load_model``) to reach
   its layers (project layers such as RandomShear are registered by importing
   ``covid_cxr.trainer.models`` when available);
3. **Grad-CAM** (Selvaraju et al. 2017): the target is the last 4-D activation of the last
   convolution -- the last Conv layer (or nested backbone model, e.g. MobileNetV2) whose output
   is 4-D, followed forward through the BatchNorm/activation layers right after it, stopping before
   pooling. The class score is the model's probability for the *predicted* class (for a sigmoid
   model: p for COVID, 1 - p for the other class). Channel weights = spatially averaged gradients;
   map = ReLU(sum of weighted channels), scaled to [0, 1] by its maximum (an all-zero map means no
   positive evidence was found), upsampled bilinearly to S x S. An averaged ensemble (the ``full``
   preset's pair, trainer/models.average_ensemble) has no single convolution on the path to its
   output: each member gets its own Grad-CAM map for its own probability of the predicted class, and
   the film's map is the mean of the members' maps, scaled to a maximum of 1 again -- each member
   counts equally, as in the averaged probability;
4. **fallback, gradient saliency** (Simonyan et al. 2014), used when the model (or one member of an
   ensemble) has no convolution, or its layers cannot be reached: |d score / d image_xf|, lightly
   Gaussian-smoothed, scaled by its 99th percentile and clipped to [0, 1]. If tf_keras cannot load
   the model at all, the plain SavedModel's ``__call__`` is differentiated instead (still saliency);
5. the map is resized onto the PNG (image_xf is a non-aspect-preserving resize of it, so this is the
   exact inverse mapping) and drawn as a jet-coloured overlay whose opacity grows with the map
   value, under a caption naming the label, its probability and the method.

These maps show where the model's score is sensitive, not where disease is. On public COVID
collections they are the quickest way to spot a model reading text labels, borders or devices.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from typing import Optional, Sequence

import numpy as np

from covid_cxr.data import images
from covid_cxr.messages import first_line

log = logging.getLogger(__name__)
GRAD_CAM = "grad-cam"
SALIENCY = "gradient-saliency"
_CONV_CLASS_NAMES = ("Conv1D", "Conv2D", "Conv3D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose")
_FOLLOW_CLASS_NAMES = ("BatchNormalization", "ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU",
                       "LayerNormalization", "GroupNormalization")


class ExplainError(Exception):
    """An explanation could not be made (message is one line)."""


def output_names(files: Sequence[str]) -> list[str]:
    """`<stem>.heatmap.png` per file, made unique with -2, -3 ... (inputs from many folders). A DICOM
    file's name is not used: hospitals name exports by patient name, id, accession number, UID and
    date (curation writes them as pseudonyms too), so its heat map is `dicom-<n>.heatmap.png`, n its
    position among the files (predict's table names each row's heat map)."""
    from covid_cxr.data import dicom

    names, taken = [], set()
    for n, file in enumerate(files, start=1):
        if dicom.is_dicom(file):
            stem = f"dicom-{n}"
        else:
            stem = os.path.splitext(os.path.basename(os.path.normpath(file)))[0] or "image"
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
        name, count = f"{stem}.heatmap.png", 1
        while name.lower() in taken:  # a/x.png, b/x.png and c/x-2.png must not share x-2
            count += 1
            name = f"{stem}-{count}.heatmap.png"
        taken.add(name.lower())
        names.append(name)
    return names


def _node_key(layer_name: str, index: int) -> str:
    """How a tf_keras Functional model names a layer's node in its ``_network_nodes`` (the module
    function tf_keras.src.engine.functional._make_node_key; a model has no such attribute)."""
    return f"{layer_name}_ib-{index}"


def _network_node(model, layer):
    """The node of `layer` that belongs to `model`'s graph (a nested model has its own node too, and
    a layer another model reuses has one in that model's graph)."""
    network_nodes = getattr(model, "_network_nodes", None)
    nodes = getattr(layer, "_inbound_nodes", [])
    if network_nodes is None:
        return nodes[-1] if nodes else None
    for index, node in enumerate(nodes):
        if _node_key(layer.name, index) in network_nodes:
            return node
    return None


def _single(tensors):
    if isinstance(tensors, (list, tuple)):
        return tensors[0] if len(tensors) == 1 else None
    return tensors


def _is_conv(layer) -> bool:
    """A convolution layer, or a nested model (backbone) that contains one."""
    names = {c.__name__ for c in type(layer).__mro__}
    if names & set(_CONV_CLASS_NAMES):
        return True
    return _is_nested_model(layer) and any(_is_conv(inner) for inner in layer.layers)


def _is_nested_model(layer) -> bool:
    return bool(getattr(layer, "layers", None)) and hasattr(layer, "inputs")


@dataclasses.dataclass
class GradCamPlan:
    """How to compute (target activation, prediction) eagerly for one tf_keras model.

    prefix: a Model from the inputs to the target's output (plain layer) or to the nested model's
    input (nested backbone: the sub-graph of a revived nested model is not reachable from outside);
    nested: the nested model to call on the prefix output, or None;
    suffix: the layers after the target, applied one by one (they must form a single chain).
    """

    layer_name: str
    prefix: object
    nested: object
    suffix: list

    def __call__(self, x):
        activations = self.prefix(x, training=False)
        if self.nested is not None:
            activations = self.nested(activations, training=False)
        out = activations
        for layer in self.suffix:
            out = layer(out, training=False) if _accepts_training(layer) else layer(out)
        return activations, out


def _accepts_training(layer) -> bool:
    import inspect

    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass
class AveragedPlans:
    """Grad-CAM for an averaged ensemble: one GradCamPlan per member; the map is their maps' mean."""

    members: list

    @property
    def layer_name(self) -> str:
        return " + ".join(plan.layer_name for plan in self.members)


def _graph_layers(model) -> list:
    """(layer, node) of `model`'s own graph in topological order, InputLayers excluded."""
    in_graph = []
    for layer in model.layers:
        node = _network_node(model, layer)
        if node is not None and type(layer).__name__ != "InputLayer":
            in_graph.append((layer, node))
    return in_graph


def _output(node):
    return _single(node.outputs)


def _averaged_members(model, in_graph) -> Optional[list]:
    """The member models when `model` is nested models that each take the model's input, averaged by
    its last layer (trainer/models.average_ensemble); otherwise None."""
    if not in_graph or type(in_graph[-1][0]).__name__ != "Average":
        return None
    members, model_input = in_graph[:-1], _name(_single(model.inputs))
    if not all(_is_nested_model(layer) and _name(_single(node.input_tensors)) == model_input
               for layer, node in members):
        return None
    return [layer for layer, _ in members]


def _name(tensor) -> Optional[str]:
    return None if tensor is None else tensor.name


def find_gradcam_target(model):
    """A GradCamPlan for the last 4-D convolution activation, AveragedPlans for an averaged ensemble
    whose every member has one, or None (no convolution, or layers after it that are not a chain)."""
    in_graph = _graph_layers(model)
    members = _averaged_members(model, in_graph)
    if members is None:
        return _chain_plan(model, in_graph)
    plans = [_chain_plan(member, _graph_layers(member)) for member in members]
    return AveragedPlans(plans) if all(plans) else None


def _chain_plan(model, in_graph):
    """The GradCamPlan of one model (not an ensemble), or None."""
    import tf_keras as keras

    last = None
    for i, (layer, node) in enumerate(in_graph):
        tensor = _output(node)
        if tensor is not None and tensor.shape.rank == 4 and _is_conv(layer):
            last = i
    if last is None:
        return None
    if not _is_nested_model(in_graph[last][0]):
        while last + 1 < len(in_graph):
            layer, node = in_graph[last + 1]
            tensor = _output(node)
            if tensor is None or tensor.shape.rank != 4 or not (
                    {c.__name__ for c in type(layer).__mro__} & set(_FOLLOW_CLASS_NAMES)):
                break
            last += 1
    layer, node = in_graph[last]
    # The layers after the target must be a chain: each consumes exactly the previous output.
    suffix = [entry[0] for entry in in_graph[last + 1:]]
    previous = _output(node)
    for _, next_node in in_graph[last + 1:]:
        inputs = _single(next_node.input_tensors)
        if _name(inputs) is None or _name(inputs) != _name(previous):
            return None
        previous = _output(next_node)
    if _is_nested_model(layer):
        source = _single(node.input_tensors)
        if source is None:
            return None
        return GradCamPlan(layer.name, keras.Model(model.inputs, source), layer, suffix)
    return GradCamPlan(layer.name, keras.Model(model.inputs, _output(node)), None, suffix)


def _class_score(predictions, class_index: int):
    import tensorflow as tf

    predictions = tf.convert_to_tensor(predictions)
    if predictions.shape[-1] == 1:  # sigmoid: p(COVID); the other class scores 1 - p
        p = predictions[:, 0]
        return p if class_index == 1 else 1.0 - p
    return predictions[:, class_index]


def _scaled_to_peak(heat: np.ndarray) -> np.ndarray:
    """`heat` divided by its maximum; all zeros when nothing is positive (no 0 / 0)."""
    top = float(np.max(heat))
    return heat / top if top > 0 else np.zeros_like(heat)


def _grad_cam(plan, x, class_index: int, size: tuple) -> np.ndarray:
    """One plan's Grad-CAM map [S, S] in [0, 1] for the model's probability of `class_index`."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        activations, predictions = plan(x)
        score = _class_score(predictions, class_index)
    grads = tape.gradient(score, activations)
    if grads is None:
        raise ExplainError("no gradient from the class score to the last convolution")
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = _scaled_to_peak(tf.nn.relu(tf.reduce_sum(activations * weights, axis=-1))[0].numpy())
    return tf.image.resize(cam[..., None], size, method="bilinear")[..., 0].numpy()


class Explainer:
    """Explains predictions of one loaded ServingModel (serving/predict.py)."""

    def __init__(self, serving_model):
        self.serving_model = serving_model
        self._ready = False
        self._keras = None
        self._grad_model = None
        self.target_layer: Optional[str] = None
        self.load_error: Optional[str] = None

    @property
    def method(self) -> str:
        self._setup()
        return GRAD_CAM if self._grad_model is not None else SALIENCY

    def _setup(self) -> None:
        if self._ready:
            return
        self._ready = True
        import tf_keras as keras

        # Registers project layers (e.g. RandomShear) so tf_keras can rebuild the graph.
        import covid_cxr.trainer.models  # noqa: F401
        try:
            self._keras = keras.models.load_model(self.serving_model.path, compile=False)
        except Exception as e:  # noqa: BLE001 - fall back to differentiating the plain SavedModel
            self.load_error = f"{type(e).__name__}"
            log.warning("explanations use gradient saliency, not Grad-CAM: the model did not load as Keras (%s)",
                        first_line(e, with_type=True))
            return
        try:
            target = find_gradcam_target(self._keras)
        except Exception as e:  # noqa: BLE001 - an unusual graph: saliency still works
            log.warning("explanations use gradient saliency, not Grad-CAM: looking for the layer to attribute to "
                        "failed (%s)", first_line(e, with_type=True))
            target = None
        if target is None:  # e.g. a dense model, or an ensemble member without a convolution
            log.info("explanations use gradient saliency: no convolution reaches the output through a chain of layers")
        else:
            self.target_layer = target.layer_name
            self._grad_model = target
            if isinstance(target, AveragedPlans):
                log.info("explanations use Grad-CAM: the mean of the %d members' maps (%s)", len(target.members),
                         target.layer_name)

    def _call_plain(self, x):
        loaded = self.serving_model._loaded
        try:
            return loaded(x, training=False)
        except TypeError:
            return loaded(x)

    def heatmap(self, image_xf: np.ndarray, class_index: int) -> tuple[np.ndarray, str]:
        """([S, S] float32 in [0, 1], method) for one image_xf [S, S, 1] or [1, S, S, 1]."""
        import tensorflow as tf

        self._setup()
        x = tf.constant(np.asarray(image_xf, dtype=np.float32).reshape((1,) + tuple(np.shape(image_xf)[-3:])))
        size = int(x.shape[1]), int(x.shape[2])
        if self._grad_model is not None:
            plans = self._grad_model.members if isinstance(self._grad_model, AveragedPlans) else [self._grad_model]
            maps = [_grad_cam(plan, x, class_index, size) for plan in plans]
            cam = maps[0] if len(maps) == 1 else _scaled_to_peak(np.mean(maps, axis=0))
            return np.clip(cam, 0.0, 1.0).astype(np.float32), GRAD_CAM
        with tf.GradientTape() as tape:
            tape.watch(x)
            predictions = self._keras(x, training=False) if self._keras is not None else self._call_plain(x)
            if isinstance(predictions, dict):
                predictions = next(iter(predictions.values()))
            score = _class_score(predictions, class_index)
        grads = tape.gradient(score, x)
        if grads is None:
            raise ExplainError("the model is not differentiable with respect to its input")
        saliency = np.abs(grads.numpy()[0]).max(axis=-1)
        import cv2

        sigma = max(0.5, size[0] / 64.0)
        saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), sigma)
        scale = float(np.percentile(saliency, 99))
        saliency = saliency / scale if scale > 0 else np.zeros_like(saliency)
        return np.clip(saliency, 0.0, 1.0).astype(np.float32), SALIENCY

    def write_overlay(self, png: bytes, prediction: dict, out_path: str) -> str:
        """Writes the overlay PNG for one prediction row (serving/predict.py); returns the method."""
        try:
            image_xf = self.serving_model.transform_images([png])
            heat, method = self.heatmap(image_xf[0], int(prediction["label_index"]))
            label = prediction["label"]
            probability = prediction["probabilities"].get(label)
            detail = "gradient saliency" if method != GRAD_CAM else (
                f"Grad-CAM, mean of {len(self._grad_model.members)} models"  # the layer names overflow the bar
                if isinstance(self._grad_model, AveragedPlans) else f"Grad-CAM ({self.target_layer})")
            caption = f"{label} {probability:.3f} | {detail}" if probability is not None else f"{label} | {detail}"
            with open(out_path, "wb") as f:  # a full disk fails this file's heat map, not the predictions
                f.write(overlay_png(images.decode_png(png), heat, caption))
        except ExplainError:
            raise
        except Exception as e:  # noqa: BLE001 - one line per file, never a traceback
            raise ExplainError(first_line(e, with_type=True)) from None
        return method


def overlay_png(gray: np.ndarray, heat: np.ndarray, caption: str = "") -> bytes:
    """RGB PNG: the grayscale image with a jet-coloured heat map (opacity 0.6 x value) and a caption bar."""
    import cv2
    import matplotlib
    from PIL import Image, ImageDraw

    h, w = gray.shape
    heat = cv2.resize(np.asarray(heat, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    base = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    alpha = 0.6 * heat[..., None]
    blended = np.clip((1 - alpha) * base + alpha * colours, 0.0, 1.0)
    picture = Image.fromarray((blended * 255).round().astype(np.uint8), mode="RGB")
    if caption:
        bar = 14
        canvas = Image.new("RGB", (w, h + bar), (0, 0, 0))
        canvas.paste(picture, (0, bar))
        ImageDraw.Draw(canvas).text((2, 1), caption, fill=(255, 255, 255))
        picture = canvas
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
