"""The settings of a detection scan (:class:`DetectConfig`) and its presets (:data:`PRESETS`).

``DetectConfig()`` is the measured default; ``DetectConfig.from_preset("paper",
n_seeds=100)`` starts from a preset and applies overrides. The CLI maps its flags
to these fields by name and reads its help texts' defaults from here.
"""

import dataclasses
from typing import Optional, Union

from aegis_tf.core.errors import AegisError
from aegis_tf.core.params import Interval, Options, validate_params
from aegis_tf.core.settings import NONNEG, POS, POS_INT, UNIT, Settings

__all__ = ["DetectConfig", "PRESETS", "METHODS", "check_method"]


@dataclasses.dataclass(frozen=True)
class DetectConfig(Settings):
    """Settings of a detection scan. Lengths and radii are in units of the [0, 1]
    pixel range; the scan scales them by the data's pixel maximum.

    Translation (AEGIS): ``n_seeds`` images of other classes translated toward
    each class by ``steps`` of targeted L2 PGD (``eps``, ``step_size``), each
    started from its seed plus Gaussian noise of std ``start_noise``.

    Scores: ``score="transfer"`` (default) pastes the ``top_frac`` most-changed
    pixels of a translation onto ``n_probes`` clean images; it transfers when
    at least ``flip_at`` of them move. ``score="clusters"`` is the paper's
    t-SNE + clustering count (``layer``, ``reducer``, ``clusterer``,
    ``bandwidth``, ``population``, ``criterion``, ``runs``,
    ``min_cluster_frac``; see :class:`aegis_tf.detect.clustering.AegisDetector`).

    ``whole_image`` adds the signal for triggers spread over the image
    (:class:`aegis_tf.detect.whole_image.WholeImageDetector`: ``wi_probes`` clean
    probes; a class is flagged when it needs ``wi_threshold`` times less norm
    than every other class; ``wi_nonrobust_factor`` times that on a model the
    robustness check measures as not robust, see below) beside the transfer score, and with it the blend
    probe (:class:`aegis_tf.detect.whole_image.BlendProbeDetector`, for blended
    triggers): ``wi_blend="auto"`` (default) runs the probe wherever the
    whole-image signal runs (a staged scan screens with it too); ``True`` asks
    for it; ``False`` turns it off.
    Measured in results/detect/detect_blend_probe*.md.

    ``warp_probe`` adds the signal for warping triggers (WaNet;
    :class:`aegis_tf.detect.warp_probe.WarpProbeDetector`): per class, one smooth
    field (``warp_grid`` x ``warp_grid`` control points, ``warp_steps`` steps on
    ``warp_fit`` images of other classes, largest offset at most ``warp_max_shift``
    of the image side) that sends other classes' images to it, then the smallest
    shift of it that moves ``flip_at`` of ``wi_probes`` fresh images there, flagged at
    the relative gap ``wi_threshold``. ``"auto"`` (default) runs it in a full scan, and in a
    staged one on every class when its projected time is within ``probe_budget`` seconds
    (otherwise the verdict line says "not run"); ``True`` runs it whatever it costs, ``False``
    turns it off. It needs no translations. Measured in results/detect/warp_probe.md.

    ``mask_probe`` adds Neural Cleanse's reverse engineering, read by the same relative
    gap (:class:`aegis_tf.detect.mask_probe.MaskProbeDetector`): per class the smallest
    mask and pattern (``mask_epochs`` of 20 steps on ``mask_fit`` training images, the
    smallest working one of ``mask_restarts`` random starts) that
    send images there, tried on ``wi_probes`` fresh images of other classes (it must move
    ``flip_at`` of them), flagged when its L1 norm is ``wi_threshold`` times smaller than
    every other class's. ``"auto"`` (default) runs it in a full scan, and in a staged one on
    every class within ``probe_budget`` seconds (as the warp probe); ``True`` runs it whatever it
    costs, ``False`` turns it off. It needs no translations, and it
    finds the small patches that a standard-trained model's translations do not carry.
    Measured in results/detect/mask_probe.md.

    ``pair_mask`` asks the mask probe's question per (source, target) pair
    (:class:`aegis_tf.detect.pair_probe.PairMaskDetector`): the smallest mask sending
    images of one source class to one target (``pair_mask_epochs`` of 20 steps, the best
    of ``pair_mask_restarts`` random starts), tried on ``wi_probes`` fresh images of the
    source; a pair is flagged when its norm is ``wi_threshold`` times smaller than every
    other pair of its row (the source toward other targets) and of its column (other
    sources toward the target). It names source-specific and all-to-all backdoors, whose
    trigger moves only some classes. On every pair it is not the default: on held-out standard
    models it named 3 of 4 source-specific and 2 of 2 all-to-all backdoors, and a natural pair
    (MNIST ``1 -> 4``, gap 2.06) on 1 of 4 clean ones, where the default verdict flagged
    none (results/detect/zoo_pair_holdout.md). ``"candidates"`` (default) runs it only on the
    pairs the per-pair view below saw transfer without flagging them (at least
    :data:`~aegis_tf.detect.pair_probe.CANDIDATE_COUNT` transferring translation, source not fragile; at most
    :data:`~aegis_tf.detect.pair_probe.CANDIDATE_MAX`, the highest shares), with twice the starts, each
    against its whole row and column, within ``pair_mask_budget`` seconds: a pair is flagged
    only when both views point at it (held out: results/detect/zoo_std_h10_runs.md). ``False``
    turns it off. ``True`` runs it on every pair in every scan whatever it costs; ``"auto"`` in a
    full scan only, when its fit, timed on its third step, would take at most ``pair_mask_budget``
    seconds (it fits 90 pairs x 3 starts on a 10-class model: about a minute for a compact MNIST net on 2 cores, many times that for a CIFAR-10 ResNet-18, which
    then says "not run"). Measured in results/detect/pair_mask.md.

    ``pairs`` adds the per-pair view (:class:`aegis_tf.detect.patch_transfer.PairTransferDetector`):
    each translation's patch on ``pair_probes`` images of its own source class, a pair flagged
    at a share of ``pair_min_score``; a translation that clears ``flip_at`` there is re-tested
    on ``pair_confirm_probes`` fresh images of the source (0 skips that). A pair flagged at a share
    under ``pair_retest_below`` gets a second look: ``pair_retest`` times its translations again,
    from fresh images of its source, and is scored on all of them (0 skips that).

    ``scan``: ``"full"`` runs the detector on every class; ``"staged"`` screens
    every class with ``stage1_seeds`` translations of ``stage1_steps`` steps,
    then runs the full detector on the ``top_k`` classes of each stage-1 signal
    plus any class whose stage-1 patch share reaches ``alarm_transfer`` or whose
    whole-image or blend gap reaches ``alarm_gap`` (:mod:`aegis_tf.detect.staged`); ``"auto"``
    (default) is staged above :data:`aegis_tf.detect.staged.STAGED_ABOVE` classes.
    ``top_k`` is at least 2, so stage 2 always has two classes to compare.

    ``robustness_images``: training images on which the scan measures the model's
    robustness beside its verdict (untargeted L2 PGD at
    :data:`aegis_tf.detect.robustness.ROBUST_EPS`; 0 skips it). It does not touch the
    translations, so the scan state's fingerprint leaves it out. On a model it measures
    as not robust, the whole-image signal's threshold is ``wi_threshold *
    wi_nonrobust_factor`` (1: unchanged): the signal probes with an additive direction,
    and a model that falls at L2 0.5 has cheap universal additive perturbations toward
    some class without any backdoor (docs/detection.md, "The whole-image signal on a
    model that is not robust"). The blend probe keeps ``wi_threshold``.
    """

    n_seeds: int = 200
    steps: int = 75
    eps: float = 100.0
    step_size: float = 0.25
    start_noise: float = 0.1
    layer: Optional[str] = None
    score: str = "transfer"
    top_frac: float = 0.02
    n_probes: int = 20
    flip_at: float = 0.9
    reducer: str = "tsne"
    clusterer: str = "meanshift"
    bandwidth: Union[str, float] = "auto"
    population: str = "translated"
    criterion: str = "absolute"
    runs: int = 1
    min_cluster_frac: float = 0.0
    whole_image: bool = True
    wi_probes: int = 50
    wi_threshold: float = 2.0
    wi_blend: Union[bool, str] = "auto"
    pairs: bool = True
    pair_probes: int = 10
    pair_confirm_probes: int = 30
    pair_min_score: float = 0.25
    pair_retest: int = 3
    pair_retest_below: float = 0.5
    scan: str = "auto"
    stage1_seeds: int = 10
    stage1_steps: int = 15
    top_k: int = 5
    alarm_transfer: float = 0.1
    alarm_gap: float = 1.5
    robustness_images: int = 300
    wi_nonrobust_factor: float = 2.0
    warp_probe: Union[bool, str] = "auto"
    warp_grid: int = 4
    warp_max_shift: float = 0.2
    warp_steps: int = 60
    warp_fit: int = 32
    mask_probe: Union[bool, str] = "auto"
    mask_fit: int = 1000
    mask_epochs: int = 10
    mask_restarts: int = 2
    pair_mask: Union[bool, str] = "candidates"
    pair_mask_epochs: int = 16
    pair_mask_restarts: int = 3
    pair_mask_budget: float = 300.0
    probe_budget: float = 300.0

    _parameter_constraints = {
        "n_seeds": POS_INT, "steps": POS_INT, "eps": POS, "step_size": POS, "start_noise": NONNEG,
        "layer": [None, str], "score": [Options("transfer", "clusters")], "top_frac": UNIT,
        "n_probes": POS_INT, "flip_at": UNIT, "reducer": [Options("tsne", "pca")],
        "clusterer": [Options("meanshift", "hdbscan", "affinity")],
        "bandwidth": [Options("auto"), Interval(float, 0, None, closed="neither")],
        "population": [Options("both", "translated")], "criterion": [Options("absolute", "relative")],
        "runs": POS_INT, "min_cluster_frac": [Interval(float, 0, 1)],
        "whole_image": [Options(True, False)], "wi_probes": POS_INT, "wi_threshold": [Interval(float, 1, None)],
        "wi_blend": [Options("auto", True, False)],
        "pairs": [Options(True, False)], "pair_probes": POS_INT, "pair_confirm_probes": [Interval(int, 0, None)],
        "pair_min_score": UNIT, "pair_retest": [Interval(int, 0, None)],
        "pair_retest_below": [Interval(float, 0, 1, closed="right")],
        "scan": [Options("auto", "full", "staged")], "stage1_seeds": POS_INT, "stage1_steps": POS_INT,
        "top_k": [Interval(int, 2, None)], "alarm_transfer": UNIT, "alarm_gap": [Interval(float, 1, None)],
        "robustness_images": [Interval(int, 0, None)], "wi_nonrobust_factor": [Interval(float, 1, None)],
        "warp_probe": [Options("auto", True, False)], "warp_grid": [Interval(int, 2, None)],
        "warp_max_shift": [Interval(float, 0, 1, closed="right")], "warp_steps": POS_INT, "warp_fit": POS_INT,
        "mask_probe": [Options("auto", True, False)], "mask_fit": POS_INT, "mask_epochs": POS_INT,
        "mask_restarts": POS_INT,
        "pair_mask": [Options("auto", "candidates", True, False)], "pair_mask_epochs": POS_INT,
        "pair_mask_restarts": POS_INT,
        "pair_mask_budget": POS, "probe_budget": POS,
    }

    @classmethod
    def from_preset(cls, name="default", **overrides):
        """The measured defaults (``"default"``) or a preset of :data:`PRESETS`, then ``overrides``.
        ``None`` overrides are ignored (a flag the user did not give)."""
        if name != "default" and name not in PRESETS:
            validate_params({"preset": name}, {"preset": [Options("default", *PRESETS)]})
        base = {} if name == "default" else PRESETS[name]
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


# The measured default is DetectConfig() (results/detect/detect_table.md, results/detect/detect_rules.md).
# The authors' notebooks (MNIST values; the scan scales eps by the pixel range). They
# flattened the output of ResNet layer4; models without one give their penultimate layer.
PRESETS = {
    "paper": {
        "n_seeds": 500, "steps": 75, "eps": 100.0, "step_size": 0.25, "layer": "layer4,penultimate",
        "reducer": "tsne", "clusterer": "meanshift", "bandwidth": 35.0, "population": "both",
        "criterion": "absolute", "runs": 1, "min_cluster_frac": 0.0, "score": "clusters", "start_noise": 0.0,
        "whole_image": False, "wi_blend": False, "warp_probe": False, "mask_probe": False,
        "pair_mask": False,
    },
}


METHODS = ("aegis", "neural-cleanse", "both")


def check_method(method):
    """A detector name: ``aegis``, ``neural-cleanse`` or ``both`` (AEGIS decides, Neural Cleanse beside it)."""
    if method not in METHODS:
        raise AegisError(f"method must be aegis, neural-cleanse or both. Received: {method}")
