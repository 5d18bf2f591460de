import numpy as np
import pytest

from aegis_tf.core.errors import AegisError
from aegis_tf.detect.neural_cleanse import NeuralCleanse, anomaly_index


def test_anomaly_index_is_median_absolute_deviation():
    norms = [10, 11, 9, 10, 2]
    idx = anomaly_index(norms)
    mad = 1.4826 * np.median(np.abs(np.array(norms) - 10))
    np.testing.assert_allclose(idx, np.abs(np.array(norms) - 10) / mad)


def test_neural_cleanse_finds_the_default_badnet_target(default_model, default_valid):
    (x, _), _ = default_valid
    nc = NeuralCleanse(epochs=6, steps_per_epoch=10, random_state=0).fit(default_model, x[:200], None, list(range(10)))
    assert nc.suspect_classes_ == [7] and nc.is_backdoored_
    assert nc.l1_norms_[7] == min(nc.l1_norms_.values())
    # The shared detector interface: per-class scores, evidence against the threshold, a report.
    assert nc.scores_ == nc.anomaly_index_ and nc.scores_[7] > nc.threshold_ == 2.0
    ev = nc.evidence("nc")
    assert ev["flagged"] == [7] and set(ev["scores"]) == {str(c) for c in range(10)} and ev["direction"] == "above"
    rep = nc.report()
    assert rep["verdict"] == "backdoored" and rep["suspect_classes"] == [7]
    assert rep["classes"]["7"]["anomaly_index"] == pytest.approx(nc.anomaly_index_[7])
    assert rep["params"]["epochs"] == 6
    m = nc.masks_[7]
    assert m.shape == x.shape[1:3] and 0.0 <= m.min() and m.max() <= 1.0


def test_neural_cleanse_checks_its_parameters_at_fit(tiny_model, rng):
    x = rng.random((8, 8, 8, 1)).astype("float32")
    with pytest.raises(AegisError, match=r"epochs must be an integer in \[1, inf\)"):
        NeuralCleanse(epochs=0).fit(tiny_model, x, None, [0, 1, 2])
    with pytest.raises(AegisError, match="at least 3 classes"):
        NeuralCleanse(epochs=1).fit(tiny_model, x, None, [0, 1])
    nc = NeuralCleanse(epochs=1, steps_per_epoch=1, batch_size=4).fit(tiny_model, x)  # classes default to all outputs
    assert nc.classes_ == [0, 1, 2] and set(nc.scores_) == {0, 1, 2}


def test_triggers_fitted_together_equal_triggers_fitted_one_by_one(default_model, default_valid):
    """Batching the classes into one model call keeps each class's own random stream, Adam
    state and cost schedule: the same masks as one fit per class."""
    from aegis_tf.detect.neural_cleanse import reverse_engineer_trigger, reverse_engineer_triggers

    (x, _), _ = default_valid
    kw = dict(epochs=3, steps_per_epoch=5, batch_size=16)
    together = reverse_engineer_triggers(default_model, x[:100], [7, 2, 5], seeds=[3, 4, 5], **kw)
    # max_batch 16: one target per call, the other grouping.
    apart = reverse_engineer_triggers(default_model, x[:100], [7, 2, 5], seeds=[3, 4, 5], max_batch=16, **kw)
    alone = [reverse_engineer_trigger(default_model, x[:100], t, seed=s, **kw) for t, s in [(7, 3), (2, 4), (5, 5)]]
    for a, b, c in zip(together, apart, alone):
        assert a["l1"] == pytest.approx(c["l1"], rel=1e-3) and b["l1"] == pytest.approx(c["l1"], rel=1e-3)
        assert a["success"] == pytest.approx(c["success"]) and b["success"] == pytest.approx(c["success"])
        np.testing.assert_allclose(a["mask"], c["mask"], atol=1e-3)
    assert len({round(r["l1"], 3) for r in together}) == 3  # three different fits, not one copied
    with pytest.raises(ValueError, match="3 targets but 2 seeds"):
        reverse_engineer_triggers(default_model, x[:100], [7, 2, 5], seeds=[3, 4], **kw)
