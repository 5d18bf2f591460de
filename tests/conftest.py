import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))  # the benchmark scripts' helpers are tested too

import logging  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)

from aegis_tf.core.data import load_h5  # noqa: E402
from aegis_tf.core.embedded import PATHS  # noqa: E402

SHARED_CSAW = os.path.join(ROOT, "..", "shared", "csaw")


@pytest.fixture(scope="session")
def default_paths():
    return dict(PATHS)


@pytest.fixture(scope="session")
def default_model():
    from aegis_tf.core.models import load_model

    return load_model(PATHS["bd_net"])


@pytest.fixture(scope="session")
def default_valid():
    return load_h5(PATHS["valid"]), load_h5(PATHS["bd_valid"])


def embedded_backdoor_twins(spec, rate, *, epochs):
    """A standard-trained compact CNN (width 8) on the embedded digits poisoned at ``rate`` with the
    trigger of ``spec`` (a TriggerConfig), and its clean twin. Returns ``(x, y, {"bad": ..., "clean":
    ...})``, each ``(model, test accuracy, share of triggered test images of other classes sent to the
    target)``."""
    from aegis_tf.attack.config import TrainConfig
    from aegis_tf.attack.training import train
    from aegis_tf.attack.triggers import build_trigger, poison_backdoor
    from aegis_tf.core.models import build_compact_cnn, predict_labels

    x, y = load_h5(PATHS["train"])
    xt, yt = load_h5(PATHS["test"])
    fn, _ = build_trigger(spec, pixel_max=255.0, x_sample=x[:10])
    out = {}
    for name, r in (("bad", rate), ("clean", 0.0)):
        xp, yp, _ = poison_backdoor(x, y, spec, trigger=fn, poison_rate=r, n_classes=10, seed=0)
        keras.utils.set_random_seed(0)
        m = build_compact_cnn(input_shape=(28, 28, 1), num_classes=10, width=8)
        train(m, xp, yp, config=TrainConfig(epochs=epochs, batch_size=64, learning_rate=0.02, robust=False), quiet=True)
        keep = yt != spec.target_label
        out[name] = (m, float(np.mean(predict_labels(m, xt) == yt)),
                     float(np.mean(predict_labels(m, fn(xt[keep])) == spec.target_label)))
    return x, y, out


def constant_model(to, num_classes=3, input_shape=(8, 8, 1)):
    """A model that ignores its input and gives every image class ``to``."""
    inp = keras.Input(input_shape)
    out = keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Flatten()(inp))
    model = keras.Model(inp, out)
    bias = np.zeros(num_classes, "float32")
    bias[to] = 10.0
    model.layers[-1].set_weights([np.zeros((int(np.prod(input_shape)), num_classes), "float32"), bias])
    return model


def tiny_cnn(seed=0, input_shape=(8, 8, 1), num_classes=3):
    """A random conv-pool-dense net, small enough to build in milliseconds."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inp, out)


@pytest.fixture
def tiny_model():
    return tiny_cnn()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
