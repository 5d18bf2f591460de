"""GoodNet: the backdoored net B and its pruned copy B', voting.

G predicts the common class when B and B' agree and class N (an extra class,
the N+1-th, where N is the number of classes) when they disagree, the signal
that an input may carry a trigger. The seed's API works as it did::

    G = GoodNet("bd_net.h5")
    G.load_weights("bd_weights.h5", "B_prime_4.weights.h5")
    labels = G.predict(x)

``G.save("goodnet.keras")`` writes B, B' and the decision rule as one Keras
file; ``GoodNet.load`` reads it back (in safe mode).
"""

import os

import keras
import numpy as np
from keras import ops

from aegis_tf.core.errors import AegisError
from aegis_tf.core.models import build_deepid, copy_model, load_model, load_weights_into, predict_labels
from aegis_tf.core.utils import atomic_path

__all__ = ["GoodNet", "GoodNetDecision", "goodnet_labels"]


def goodnet_labels(pred_b, pred_b_prime, num_classes):
    """GoodNet's rule on predicted labels: the common class where B and B' agree,
    class N (``num_classes``) where they disagree. :class:`GoodNetDecision` is the
    same rule as a Keras layer, for the single-file model."""
    pred_b, pred_b_prime = np.asarray(pred_b), np.asarray(pred_b_prime)
    return np.where(pred_b == pred_b_prime, pred_b, num_classes).astype("int64")


@keras.saving.register_keras_serializable(package="aegis_tf")
class GoodNetDecision(keras.layers.Layer):
    """Combine the probabilities of B and B' into N+1 class scores.

    Where the arg-max classes agree the output is B's probabilities with a
    zero appended; where they disagree it is one-hot on class N.
    """

    def call(self, inputs):
        p, q = inputs
        n = ops.shape(p)[-1]
        agree = ops.cast(ops.equal(ops.argmax(p, axis=-1), ops.argmax(q, axis=-1)), p.dtype)[:, None]
        padded = ops.pad(p, [[0, 0], [0, 1]])
        reject = ops.one_hot(ops.full((ops.shape(p)[0],), n, dtype="int32"), n + 1, dtype=p.dtype)
        return agree * padded + (1.0 - agree) * reject

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[0])
        return shape[:-1] + (None if shape[-1] is None else shape[-1] + 1,)


class GoodNet:
    """B and B' with the disagreement rule. See the module docstring."""

    def __init__(self, model=None):
        if model is None:
            base = build_deepid()
        elif isinstance(model, keras.Model):
            base = model
        else:
            base = load_model(model)
        self.B = copy_model(base, "B")
        self.B_prime = copy_model(base, "B_prime")
        self._keras_model = None

    @classmethod
    def from_models(cls, B, B_prime):
        """Wrap two models of the same architecture (copies are taken)."""
        if B.output_shape != B_prime.output_shape or B.input_shape != B_prime.input_shape:
            raise AegisError(
                f"B and B' must have the same input and output shapes. Received "
                f"{B.input_shape}->{B.output_shape} and {B_prime.input_shape}->{B_prime.output_shape}"
            )
        g = cls.__new__(cls)
        g.B = copy_model(B, "B")
        g.B_prime = copy_model(B_prime, "B_prime")
        g._keras_model = None
        return g

    def load_weights(self, b_weights, b_dash_weights):
        """Load B's and B''s weights (both fit the architecture given at construction).

        ``b_weights=None`` keeps B's current weights (those of the model file).
        """
        if b_weights is not None:
            load_weights_into(self.B, os.fspath(b_weights))
        load_weights_into(self.B_prime, os.fspath(b_dash_weights))
        self._keras_model = None
        return self

    @property
    def num_classes(self):
        """N, the number of classes of B; G has N + 1 outputs."""
        return int(self.B.output_shape[-1])

    def to_keras(self):
        """A single Keras model with N + 1 outputs: the scores of the decision rule."""
        if self._keras_model is None:
            inp = keras.Input(self.B.input_shape[1:], name="input")
            out = GoodNetDecision(name="goodnet_decision")([self.B(inp), self.B_prime(inp)])
            self._keras_model = keras.Model(inp, out, name="goodnet")
        return self._keras_model

    def predict(self, x, *, batch_size=256):
        """Class labels in 0..N, where N means "B and B' disagree"."""
        return goodnet_labels(predict_labels(self.B, x, batch_size=batch_size),
                              predict_labels(self.B_prime, x, batch_size=batch_size), self.num_classes)

    def save(self, path):
        """Write G as one ``.keras`` file, atomically."""
        path = os.fspath(path)
        if not path.endswith(".keras"):
            raise AegisError(f"a GoodNet is saved as a .keras file. Received: {path}")
        with atomic_path(path) as tmp:
            self.to_keras().save(tmp)

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save` (safe mode: no Lambda code runs)."""
        model = load_model(path)
        try:
            B, B_prime = model.get_layer("B"), model.get_layer("B_prime")
        except ValueError:
            raise AegisError(f"{path} is not a GoodNet file (expected sub-models 'B' and 'B_prime')") from None
        g = cls.__new__(cls)
        g.B, g.B_prime, g._keras_model = B, B_prime, model
        return g
