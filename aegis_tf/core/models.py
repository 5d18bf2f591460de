"""Model building, safe loading, and the graph queries repair and detection need.

Third-party model files are untrusted: every full-model load goes through
``keras.models.load_model(..., safe_mode=True)``, which refuses Lambda layers
(whose code would be unmarshalled) in both ``.keras`` and legacy ``.h5`` files.
"""

import os
import warnings
import weakref
import zipfile

import h5py
import keras
import numpy as np
from keras import layers

from aegis_tf.core.errors import AegisError

__all__ = [
    "POOLING_TYPES",
    "build_deepid",
    "build_compact_cnn",
    "build_resnet",
    "build_model",
    "ARCHITECTURES",
    "penultimate_layer",
    "load_model",
    "predict_labels",
    "find_last_pooling_layer",
    "find_feeding_conv",
    "find_prune_site",
    "num_classes",
    "copy_model",
    "logits_model",
    "load_weights_into",
    "check_image_classifier",
]

POOLING_TYPES = (
    layers.MaxPooling2D,
    layers.AveragePooling2D,
    layers.GlobalMaxPooling2D,
    layers.GlobalAveragePooling2D,
)


def build_deepid(*, input_shape=(55, 47, 3), num_classes=1283):
    """The CSAW-HackML DeepID BadNet architecture, with its original layer names.

    conv_1(20, 4x4) pool_1 conv_2(40, 3x3) pool_2 conv_3(60, 3x3) pool_3, then
    flatten_1 -> fc_1(160) and conv_4(80, 2x2) -> flatten_2 -> fc_2(160), add_1,
    relu, softmax ``output``. The challenge's weights-only ``bd_weights.h5``
    files load into it with ``load_weights``. It takes raw 0-255 pixels.
    """
    inp = keras.Input(input_shape, name="input")
    x = layers.Conv2D(20, 4, activation="relu", name="conv_1")(inp)
    x = layers.MaxPooling2D(2, name="pool_1")(x)
    x = layers.Conv2D(40, 3, activation="relu", name="conv_2")(x)
    x = layers.MaxPooling2D(2, name="pool_2")(x)
    x = layers.Conv2D(60, 3, activation="relu", name="conv_3")(x)
    pool_3 = layers.MaxPooling2D(2, name="pool_3")(x)
    a = layers.Dense(160, name="fc_1")(layers.Flatten(name="flatten_1")(pool_3))
    b = layers.Conv2D(80, 2, activation="relu", name="conv_4")(pool_3)
    b = layers.Dense(160, name="fc_2")(layers.Flatten(name="flatten_2")(b))
    x = layers.Activation("relu", name="activation_1")(layers.Add(name="add_1")([a, b]))
    out = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inp, out, name="deepid")


def build_compact_cnn(*, input_shape=(28, 28, 1), num_classes=10, width=16, input_scale=1.0 / 255.0):
    """A small BadNet-style CNN that trains in seconds on CPU.

    ``Rescaling(input_scale)`` first, so by default it takes raw 0-255 pixels
    like the CSAW models. Three conv+pool stages (``pool_3`` is the last pooling
    layer that repair prunes), then ``penultimate`` (dense) and ``output``.
    """
    inp = keras.Input(input_shape, name="input")
    x = layers.Rescaling(input_scale, name="rescale")(inp)
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="conv_1")(x)
    x = layers.MaxPooling2D(2, name="pool_1")(x)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv_2")(x)
    x = layers.MaxPooling2D(2, name="pool_2")(x)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv_3")(x)
    x = layers.MaxPooling2D(2, name="pool_3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4 * width, activation="relu", name="penultimate")(x)
    out = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inp, out, name="compact_cnn")


def _conv_bn(x, filters, kernel, stride, name):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name + "_conv")(x)
    return layers.BatchNormalization(name=name + "_bn")(x)


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = layers.Activation("relu", name=name + "_relu1")(_conv_bn(x, filters, 3, stride, name + "_1"))
    y = _conv_bn(y, filters, 3, 1, name + "_2")
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv_bn(shortcut, filters, 1, stride, name + "_short")
    return layers.Activation("relu", name=name + "_out")(layers.Add(name=name + "_add")([y, shortcut]))


def _bottleneck_block(x, filters, stride, name):
    shortcut = x
    y = layers.Activation("relu", name=name + "_relu1")(_conv_bn(x, filters, 1, 1, name + "_1"))
    y = layers.Activation("relu", name=name + "_relu2")(_conv_bn(y, filters, 3, stride, name + "_2"))
    y = _conv_bn(y, 4 * filters, 1, 1, name + "_3")
    if stride != 1 or shortcut.shape[-1] != 4 * filters:
        shortcut = _conv_bn(shortcut, 4 * filters, 1, stride, name + "_short")
    return layers.Activation("relu", name=name + "_out")(layers.Add(name=name + "_add")([y, shortcut]))


def build_resnet(depth=18, *, input_shape=(32, 32, 3), num_classes=10, width=64, input_scale=1.0 / 255.0):
    """ResNet-18 or ResNet-50 for small inputs (CIFAR-style stem: 3x3 conv, no max-pool).

    Stages are named ``layer1`` .. ``layer4`` (the output of ``layer4`` is the
    feature map the AEGIS authors flattened), then global average pooling
    ``penultimate`` and the softmax ``output``. ``width`` scales every stage
    (64 is the standard net; tests use 8).
    """
    blocks = {18: (_basic_block, (2, 2, 2, 2)), 50: (_bottleneck_block, (3, 4, 6, 3))}
    if depth not in blocks:
        raise AegisError(f"ResNet depth must be 18 or 50. Received: {depth}")
    block, counts = blocks[depth]
    inp = keras.Input(input_shape, name="input")
    x = layers.Rescaling(input_scale, name="rescale")(inp)
    x = layers.Activation("relu", name="stem_relu")(_conv_bn(x, width, 3, 1, "stem"))
    for stage, n in enumerate(counts, start=1):
        for i in range(n):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(x, width * 2 ** (stage - 1), stride, f"layer{stage}_{i}")
        x = layers.Identity(name=f"layer{stage}")(x)
    x = layers.GlobalAveragePooling2D(name="penultimate")(x)
    out = layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inp, out, name=f"resnet{depth}")


ARCHITECTURES = ("compact", "resnet18", "resnet50", "deepid")


def build_model(arch, *, input_shape, num_classes, input_scale=1.0 / 255.0, width=None):
    """Build one of :data:`ARCHITECTURES` for the given input and classes."""
    if arch == "compact":
        return build_compact_cnn(input_shape=input_shape, num_classes=num_classes, width=width or 16,
                                 input_scale=input_scale)
    if arch in ("resnet18", "resnet50"):
        return build_resnet(int(arch[6:]), input_shape=input_shape, num_classes=num_classes, width=width or 64,
                            input_scale=input_scale)
    if arch == "deepid":
        return build_deepid(input_shape=input_shape, num_classes=num_classes)
    raise AegisError(f"arch must be one of {', '.join(ARCHITECTURES)}. Received: {arch!r}")


def penultimate_layer(model):
    """The layer whose output feeds the classifier: ``penultimate`` if present,
    else the input of the last Dense layer (``activation_1`` in DeepID)."""
    try:
        return model.get_layer("penultimate")
    except ValueError:
        pass
    dense = [l for l in model.layers if isinstance(l, layers.Dense)]
    if not dense:
        raise AegisError("model has no Dense output layer; name the feature layer explicitly (--layer)")
    node = dense[-1]._inbound_nodes[0]
    return node.parent_nodes[0].operation


def _is_weights_only(path):
    try:
        with h5py.File(path, "r") as f:
            return "model_config" not in f.attrs and "layer_names" in f.attrs
    except OSError:
        return False


def load_weights_into(model, weights):
    """Load a weights file into ``model``; any mismatch is a one-line AegisError.

    Keras only warns when part of a ``.weights.h5`` file does not match and
    leaves those layers at their initial values; here that is an error, so a
    model is never half-loaded.
    """
    if not os.path.isfile(weights):
        raise AegisError(f"weights file not found: {weights} (expected a Keras .h5 or .weights.h5 file)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(weights)
        except Exception as e:  # Keras raises ValueError, OSError, KeyError... for a bad match
            detail = str(e).splitlines()[0] if str(e) else "no detail"
            raise AegisError(f"cannot load weights {weights} into model {model.name!r} ({type(e).__name__}: {detail})") from None
    partial = [w for w in caught if "weights" in str(w.message).lower() or "skipping" in str(w.message).lower()]
    if partial:
        detail = str(partial[0].message).splitlines()[0]
        raise AegisError(f"weights {weights} do not match model {model.name!r}: {detail}")


def load_model(path=None, weights=None):
    """Load a model for inspection, safely.

    * ``path`` is a ``.keras`` or full-model ``.h5`` file (Keras 3, or Keras 2
      era such as the CSAW ``bd_net.h5``), loaded with ``safe_mode=True``.
    * ``weights`` alone: the weights are loaded into :func:`build_deepid`.
    * both: ``weights`` are loaded into the model read from ``path``.
    """
    if path is None and weights is None:
        raise AegisError("expected a model file (--bad_model) or a weights file (--bad_model_weights)")
    if path is None:
        model = build_deepid()
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise AegisError(f"model file not found: {path} (expected a .keras or .h5 Keras model)")
        if not path.endswith((".keras", ".h5", ".hdf5")):
            raise AegisError(f"expected a .keras or .h5 Keras model file. Received: {path}")
        if path.endswith((".h5", ".hdf5")) and _is_weights_only(path):
            raise AegisError(
                f"{path} holds weights only, no architecture; pass it as --bad_model_weights "
                "(it loads into the built-in DeepID net) or give the full model as --bad_model"
            )
        if path.endswith(".keras") and not zipfile.is_zipfile(path):
            raise AegisError(f"cannot load model {path}: not a .keras archive (a zip file); the file is damaged or "
                             "of another format")
        try:
            model = keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "safe_mode" in str(e) or "lambda" in str(e).lower():
                raise AegisError(
                    f"refusing to load {path}: it contains a Lambda layer (arbitrary code), "
                    "which safe mode does not execute for untrusted files"
                ) from None
            raise AegisError(f"cannot load model {path}: {msg}") from None
        if not isinstance(model, keras.Model):
            raise AegisError(f"{path} does not hold a Keras model")
    if weights is not None:
        load_weights_into(model, os.fspath(weights))
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise AegisError(
            f"expected a classifier with one input and one output. Received {len(model.inputs)} "
            f"inputs and {len(model.outputs)} outputs"
        )
    return model


def check_image_classifier(model):
    """Raise AegisError unless ``model`` takes images (N, H, W, C) and gives class scores (N, K).

    Returns the number of classes K.
    """
    try:
        in_shape, out_shape = model.input_shape, model.output_shape
    except (AttributeError, ValueError):
        raise AegisError(f"model {model.name!r} has no defined input and output shape; "
                         "expected a built image classifier") from None
    if isinstance(in_shape, list) or isinstance(out_shape, list):
        raise AegisError(f"expected a classifier with one input and one output. Received input shape {in_shape} "
                         f"and output shape {out_shape}")
    if len(in_shape) != 4:
        raise AegisError(f"model takes input of shape {tuple(in_shape)}; expected images (H, W, C)")
    if len(out_shape) != 2 or out_shape[-1] is None:
        raise AegisError(f"model gives output of shape {tuple(out_shape)}; expected class scores (N, K)")
    return int(out_shape[-1])


_LOGITS = weakref.WeakKeyDictionary()  # model -> its logits model


class _Logits(layers.Layer):
    """The pre-softmax scores of a Dense layer whose activation is softmax."""

    def __init__(self, dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, x):
        out = keras.ops.matmul(x, self.dense.kernel)
        return out + self.dense.bias if self.dense.use_bias else out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.dense.units,)


def logits_model(model):
    """A model sharing ``model``'s layers and weights that outputs logits.

    If the last layer is a softmax Dense or a softmax Activation, the softmax
    is dropped; otherwise the output is taken to be logits already. Cached on
    the model.
    """
    cached = _LOGITS.get(model)
    if cached is not None:
        return cached
    last = model.layers[-1]
    act = getattr(getattr(last, "activation", None), "__name__", None)
    if isinstance(last, layers.Dense) and act == "softmax":
        out = _Logits(last, name="logits")(last.input)
        result = keras.Model(model.inputs[0], out, name=f"{model.name}_logits")
    elif isinstance(last, (layers.Activation, layers.Softmax)) and (act == "softmax" or isinstance(last, layers.Softmax)):
        result = keras.Model(model.inputs[0], last.input, name=f"{model.name}_logits")
    else:
        result = model
    _LOGITS[model] = result
    return result


def copy_model(model, name=None):
    """An independent copy of ``model`` (same architecture and weights), optionally renamed."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if name is not None:
        clone.name = name
    return clone


def num_classes(model):
    return int(model.output_shape[-1])


def predict_labels(model, x, *, batch_size=256):
    """Arg-max class of each image, as int64."""
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return np.argmax(probs, axis=-1).astype("int64")


def find_last_pooling_layer(model, name=None):
    """The last pooling layer of ``model`` (or the layer called ``name``)."""
    if name is not None:
        try:
            layer = model.get_layer(name)
        except ValueError:
            names = ", ".join(l.name for l in model.layers)
            raise AegisError(f"model has no layer named {name!r}; its layers are: {names}") from None
        return layer
    pools = [l for l in model.layers if isinstance(l, POOLING_TYPES)]
    if not pools:
        kinds = sorted({type(l).__name__ for l in model.layers})
        raise AegisError(
            "model has no pooling layer (expected MaxPooling2D, AveragePooling2D or a global "
            f"pooling layer; found {', '.join(kinds)}); name a layer with --layer"
        )
    return pools[-1]


# Layers that map a zero channel to a zero channel, so zeroing the feeding
# convolution's kernel and bias zeroes the pooled channel.
_PASS_THROUGH = (layers.Activation, layers.ReLU, layers.Dropout, layers.SpatialDropout2D) + POOLING_TYPES
_ZERO_PRESERVING_ACTIVATIONS = ("relu", "linear", "relu6", "elu", "selu", "tanh", "leaky_relu", "gelu", "silu", "swish")


def _single_inbound_layer(layer):
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        return None
    parents = nodes[0].parent_nodes
    if len(parents) != 1:
        return None
    return parents[0].operation


def _single_outbound_layer(layer):
    nodes = getattr(layer, "_outbound_nodes", None) or []
    return nodes[0].operation if len(nodes) == 1 else None


def find_prune_site(model, layer):
    """The layer whose weights prune ``layer``'s channels: the Conv2D that feeds it
    (:func:`find_feeding_conv`; zeroing its kernel and bias zeroes the channel), or,
    where a global pooling layer is not fed by a convolution alone (a ResNet's
    addition and batch normalisation sit in between), the one Dense layer that
    reads it (zeroing the channel's input row of its kernel is the same as zeroing
    the pooled channel). Raises AegisError when neither holds."""
    try:
        return find_feeding_conv(model, layer)
    except AegisError as conv_error:
        reader = _single_outbound_layer(layer)
        if (len(layer.output.shape) == 2 and isinstance(reader, layers.Dense)
                and reader.kernel.shape[0] == layer.output.shape[-1]):
            return reader
        raise AegisError(f"{conv_error}; nor is it a global pooling layer read by one Dense layer") from None


def find_feeding_conv(model, layer):
    """The Conv2D whose channels become ``layer``'s channels.

    Walks back through layers that keep a zero channel at zero (activations,
    dropout, pooling). Raises AegisError if something else (batch
    normalisation, an addition) sits in between, because zeroing the
    convolution would then not zero the channel.
    """
    current = layer
    path = []
    while True:
        if isinstance(current, layers.Conv2D):
            act = getattr(current.activation, "__name__", str(current.activation))
            if act not in _ZERO_PRESERVING_ACTIVATIONS:
                raise AegisError(f"cannot prune {current.name}: activation {act!r} does not keep zero at zero")
            return current
        if current is not layer and not isinstance(current, _PASS_THROUGH):
            break
        if isinstance(current, layers.Activation):
            act = getattr(current.activation, "__name__", "")
            if act not in _ZERO_PRESERVING_ACTIVATIONS:
                break
        path.append(current.name)
        parent = _single_inbound_layer(current)
        if parent is None or isinstance(parent, layers.InputLayer):
            break
        current = parent
    raise AegisError(
        f"cannot prune at {layer.name}: expected it to be fed by a Conv2D through activations or "
        f"pooling only; found {type(current).__name__} {current.name!r} on the way"
    )
