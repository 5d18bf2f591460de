"""Is the scanned model adversarially robust? AEGIS assumes it is; this measures it.

AEGIS translates images toward each class with targeted PGD and reads the
trigger off the translations. That works on an adversarially robust model,
whose translations carry the features of their class (or the trigger); on a
standard-trained one, PGD moves any image to any class with an invisible
perturbation, and the signals lose their meaning. So a scan measures, beside
its verdict, how the model stands up to an ordinary attack:
:func:`measure_robustness` runs untargeted L2 PGD (random start) at the radius
the project's robust models are trained at (:data:`ROBUST_EPS`, the default of
:class:`aegis_tf.attack.config.TrainConfig`'s ``eps``) on a seeded sample of the
training images, and reports the clean and PGD accuracies.

The rule, a heuristic: the model counts as robust when its PGD accuracy is at
least half its clean accuracy (:data:`ROBUST_SHARE`). A model that loses most
of its accuracy at this radius is not the robust model AEGIS assumes. The
converse does not hold: on small grayscale images a standard-trained CNN keeps
most of its accuracy at L2 0.5 too (the embedded standard BadNet ``bd_net.h5``:
93% of 300 images, against 96% and 99.7% for the robust pair; a standard MNIST
CNN: 88%), so the check passes it; it catches models that collapse at this
radius, as standard-trained models on natural images (CIFAR-10) do, and does not
prove that a model was adversarially trained (docs/detection.md, "Robustness
check"). It says how much to trust the verdict, and changes one thing in it: on a
model measured as not robust, the whole-image signal needs a larger gap
(:func:`aegis_tf.detect.scan.whole_image_threshold`, recorded here as
``whole_image_threshold``).
"""

import numpy as np

from aegis_tf.core.errors import AegisError
from aegis_tf.core.pgd import projected_gradient_descent
from aegis_tf.core.settings import default_step_size

__all__ = ["ROBUST_EPS", "ROBUST_SHARE", "measure_robustness", "robustness_line"]

# The L2 radius of the check, in units of [0, 1] (scaled by the pixel maximum): the radius the
# project's robust models are trained at (TrainConfig.eps). Not DetectConfig.eps: that is the
# translation's budget (100), far beyond any robustness radius.
ROBUST_EPS = 0.5
# The model counts as robust when its PGD accuracy is at least this share of its clean accuracy.
ROBUST_SHARE = 0.5

_ROBUST_NOTE = "robust at this radius (PGD keeps at least half the clean accuracy), as AEGIS assumes"
_STANDARD_NOTE = ("not robust, like a standard-trained model: AEGIS assumes a robust model; "
                  "read the verdict with care")


def measure_robustness(model, x, y, *, eps=ROBUST_EPS, pixel_max=255.0, n_images=300, steps=10, seed=0,
                       batch_size=256):
    """Clean and untargeted L2 PGD accuracy of ``model`` on a seeded sample of ``n_images``
    of ``(x, y)`` (all of them when fewer). ``eps`` is in units of [0, 1] (scaled by
    ``pixel_max``); PGD takes ``steps`` steps of ``2.5 * eps / steps`` from a random start.

    Returns ``{"clean_acc", "pgd_acc", "eps", "steps", "n_images", "robust", "note"}``:
    ``robust`` when ``pgd_acc >= ROBUST_SHARE * clean_acc`` (a heuristic; see the module),
    ``note`` the sentence the report shows.
    """
    from aegis_tf.core.models import predict_labels

    x = np.asarray(x)
    y = np.asarray(y).astype("int64").reshape(-1)
    if len(x) == 0 or len(x) != len(y):
        raise AegisError(f"the robustness check needs images and as many labels. Received: {len(x)} images, "
                         f"{len(y)} labels")
    if n_images < 1:
        raise AegisError(f"n_images must be >= 1. Received: {n_images}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(x), size=min(int(n_images), len(x)), replace=False))
    xs, ys = x[pick].astype("float32"), y[pick]
    clean_acc = float(np.mean(predict_labels(model, xs, batch_size=batch_size) == ys))
    adv = projected_gradient_descent(model, xs, eps=eps * pixel_max,
                                     step_size=default_step_size(eps, steps) * pixel_max, steps=steps, norm=2,
                                     y=ys, random_start=True, clip_min=0.0, clip_max=pixel_max, seed=seed,
                                     batch_size=batch_size)
    pgd_acc = float(np.mean(predict_labels(model, adv, batch_size=batch_size) == ys))
    robust = bool(pgd_acc >= ROBUST_SHARE * clean_acc)
    return {"clean_acc": clean_acc, "pgd_acc": pgd_acc, "eps": float(eps), "steps": int(steps),
            "n_images": len(pick), "robust": robust, "note": _ROBUST_NOTE if robust else _STANDARD_NOTE}


def robustness_line(r):
    """``PGD accuracy 12.3% at L2 eps 0.5 (clean 98.0%, 300 images): standard-trained; ...``."""
    line = (f"PGD accuracy {100 * r['pgd_acc']:.1f}% at L2 eps {r['eps']:g} (clean {100 * r['clean_acc']:.1f}%, "
            f"{r['n_images']} images): {r['note']}")
    if not r["robust"] and r.get("whole_image_threshold") is not None:
        line += f"; the whole-image signal needs a gap of {r['whole_image_threshold']:g} here"
    return line
