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
