"""The two-stage scan: screen every class cheaply, then run the full detector on the few that look suspicious.

A full AEGIS scan costs classes x seeds x steps forward+backward passes, so a
1,283-class face model takes hours on a CPU. The staged scan keeps the cost of
the full detector fixed:

- **Stage 1** (:func:`screen`) translates ``stage1_seeds`` images toward every
  class with ``stage1_steps`` PGD steps, in chunks of classes, and measures
  the signals of the default verdict on those short translations: the patch
  share (:mod:`aegis_tf.detect.patch_transfer`, :data:`SCREEN_PROBES` probes), the
  whole-image gap and, where :func:`blend_probe_on`, the blend gap
  (:mod:`aegis_tf.detect.whole_image`, :data:`SCREEN_WI_PROBES` probes each).
- **Promotion** (:func:`promote`, a pure function): the ``top_k`` classes of
  each signal (a patch share of 0 fills no place), plus every class at or above
  that signal's alarm level (``alarm_gap`` for both gaps).
- **Stage 2** runs the full detector (:func:`aegis_tf.detect.scan.run_aegis`
  with ``scan="full"``) on the promoted classes only; its verdict is the
  scan's. Its whole-image and blend gaps compare the promoted classes only, so a
  class is flagged by either only if its stage-1 gap of the same signal (against
  every class) also reaches ``alarm_gap``. The warp and mask probes need no
  translations: they run as in a full scan, on *every* class, when each one's
  projected time is within ``probe_budget`` seconds (otherwise the verdict says
  "not run"; ``--warp-probe`` / ``--mask-probe`` run them whatever they cost).

Stage 1 saves its per-class results after every chunk, and stage 2 its
translations after every class, through :class:`aegis_tf.detect.state.ScanState`
(the one mechanism a full scan uses too), so ``--resume`` continues an
interrupted scan where it stopped. Chunks are fixed by the class list and the
batch size (both in the fingerprint) and each has its own random seed, so a
resumed scan gives the same numbers as an uninterrupted one.
"""

from aegis_tf.core.errors import AegisError
from aegis_tf.detect.patch_transfer import (PatchTransferDetector, patch_transfer_rates, probes_moved_histogram,
                                     rates_from_histogram)
from aegis_tf.detect.translation import translate, translation_attack
from aegis_tf.core.utils import progress
from aegis_tf.detect.whole_image import BlendProbeDetector, WholeImageDetector, blend_alphas, flip_norms

__all__ = ["STAGED_ABOVE", "SCREEN_PROBES", "SCREEN_WI_PROBES", "blend_probe_on", "scan_mode", "promote",
           "promote_all", "screen", "probe_budget",
           "score_screen", "screen_config", "chunk_seed", "translate_promoted", "stage1_table", "top_line"]

# "auto" runs the staged scan when more classes than this are examined. With the
# defaults, stage 2 alone runs the full detector on up to 2 x top_k = 10 classes,
# the cost of a full 10-class scan, so a staged scan of 20 classes or fewer saves
# at most half and risks a miss for it; MNIST-size models keep the full scan.
STAGED_ABOVE = 20
SCREEN_PROBES = 10  # clean probes per stage-1 patch (the full scan: n_probes, 20)
SCREEN_WI_PROBES = 10  # clean probes per class for the stage-1 whole-image norm (full: wi_probes, 50)


def blend_probe_on(config):
    """Whether a scan runs the blend probe: ``wi_blend=True``, or the
    default ``"auto"`` with the whole-image signal on (off in the paper preset)."""
    return config.wi_blend is True or (config.wi_blend == "auto" and bool(config.whole_image))


def probe_budget(config, name, mode):
    """The time budget (seconds) of the translation-free probe ``name`` (``"mask_probe"`` or
    ``"warp_probe"``) in a scan of ``mode``: ``config.probe_budget`` for an ``"auto"`` probe in a
    staged scan (models with many classes, where one fit per class may cost more than the rest of
    the scan), None (no limit) in a full scan or when the probe is asked for (``True``)."""
    return float(config.probe_budget) if mode == "staged" and getattr(config, name) == "auto" else None


def scan_mode(config, n_classes):
    """``"full"`` or ``"staged"``: the config's ``scan``, with ``"auto"`` resolved by the class count."""
    if config.scan != "auto":
        return config.scan
    return "staged" if n_classes > STAGED_ABOVE else "full"


def promote(scores, *, top_k, alarm):
    """The classes one stage-1 signal promotes: its ``top_k`` highest ``scores``
    (``{class: score}``; ties go to the lower class) plus every class whose score
    reaches ``alarm``. A score of 0 is no evidence (no translation's patch
    transferred), so such a class fills no top-k place. Returns a sorted list."""
    if top_k < 0:
        raise AegisError(f"top_k must be >= 0. Received: {top_k}")
    ranked = sorted((c for c in scores if scores[c] > 0), key=lambda c: (-scores[c], c))
    return sorted(set(ranked[:top_k]) | {c for c, s in scores.items() if s >= alarm})


def promote_all(stage1, config):
    """The union of :func:`promote` over the stage-1 signals of :func:`score_screen`."""
    alarms = {"patch_transfer": config.alarm_transfer, "whole_image": config.alarm_gap,
              "blend_probe": config.alarm_gap}
    found = set()
    for signal, alarm in alarms.items():
        if signal in stage1:
            found.update(promote(stage1[signal], top_k=config.top_k, alarm=alarm))
    return sorted(found)


def screen_config(config):
    """The translation and probe settings of stage 1."""
    return config.replace(n_seeds=config.stage1_seeds, steps=config.stage1_steps,
                          n_probes=min(config.n_probes, SCREEN_PROBES), wi_probes=min(config.wi_probes, SCREEN_WI_PROBES))


def _chunks(classes, size):
    return [classes[i:i + size] for i in range(0, len(classes), size)]


def chunk_seed(seed, first_class):
    # One seed per chunk, fixed by the scan's seed and the chunk's first class (below 2**31).
    return (seed * 1_000_003 + first_class) % (2**31 - 1)


def screen(model, x, y, classes, config, *, pixel_max, seed=0, batch_size=512, done=None, save=None, quiet=True):
    """Stage 1: short translations toward every class of ``classes``, scored per class.

    Returns ``{class: result}`` (JSON-ready: ``reached``, ``probes_moved_histogram``,
    ``flip_norm``, ``share_at_norm`` and, where :func:`blend_probe_on`, ``blend_alpha``).
    Classes go in chunks of about ``batch_size`` translations; ``done`` holds results
    already measured (a resumed scan), whose chunks are skipped (a chunk saved without
    the blend weight the scan needs is measured again); ``save(results)`` is called
    after every chunk.
    """
    cfg = screen_config(config)
    blend = blend_probe_on(config)
    needed = ("blend_alpha",) if blend else ()
    results = {int(c): r for c, r in (done or {}).items() if all(k in r for k in needed)}
    size = max(3, batch_size // cfg.n_seeds)  # the whole-image bisection compares within a chunk: no 1-class chunks
    attack = translation_attack(model, cfg, pixel_max=pixel_max)
    chunks = _chunks(list(classes), size)
    if len(chunks) > 1 and len(chunks[-1]) < 3:  # fold a short tail into the chunk before it
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    with progress(total=len(classes), quiet=quiet, desc="stage 1: screen", unit="class") as bar:
        for part in chunks:
            if all(c in results for c in part):
                bar.update(len(part))
                continue
            s = chunk_seed(seed, part[0])
            tr = translate(model, x, y, part, cfg, pixel_max=pixel_max, seed=s, batch_size=batch_size, attack_fn=attack)
            rates = patch_transfer_rates(model, x, y, tr, top_frac=cfg.top_frac, n_probes=cfg.n_probes, seed=s,
                                         batch_size=batch_size)
            norms = flip_norms(model, x, y, tr, n_probes=cfg.wi_probes, pixel_max=pixel_max, seed=s,
                               batch_size=batch_size)
            alphas = (blend_alphas(model, x, y, tr, n_probes=cfg.wi_probes, seed=s, batch_size=batch_size)
                      if blend else {})
            for c in part:
                results[c] = {"reached": tr[c].reached,
                              "probes_moved_histogram": probes_moved_histogram(rates[c][0], len(rates[c][2])).tolist(),
                              "flip_norm": norms[c][0], "share_at_norm": norms[c][1],
                              **({"blend_alpha": alphas[c][0]} if blend else {})}
            if save is not None:
                save(results)
            bar.update(len(part))
    return {c: results[c] for c in classes}


def score_screen(results, config):
    """Each stage-1 signal's per-class score from :func:`screen`'s results:
    ``{"patch_transfer": {class: share}, "whole_image": {class: gap}, "blend_probe": {class: gap}}``
    (both gaps need 3 classes or more; the blend gap, results with ``blend_alpha``)."""
    transfer = PatchTransferDetector(flip_at=config.flip_at).fit_rates(
        {c: rates_from_histogram(r["probes_moved_histogram"]) for c, r in results.items()})
    scores = {"patch_transfer": transfer.scores_}
    if len(results) >= 3:
        whole = WholeImageDetector(threshold=config.wi_threshold).fit_norms(
            {c: r["flip_norm"] for c, r in results.items()})
        scores["whole_image"] = whole.scores_
        if all("blend_alpha" in r for r in results.values()):
            blend = BlendProbeDetector(threshold=config.wi_threshold).fit_norms(
                {c: r["blend_alpha"] for c, r in results.items()})
            scores["blend_probe"] = blend.scores_
    return scores


def translate_promoted(model, x, y, promoted, config, *, pixel_max, seed=0, batch_size=512, state=None, quiet=True):
    """Stage 2's translations: the full settings (``config`` with ``scan="full"``) toward each
    promoted class, one class at a time, each with its own seed. ``state`` (a
    :class:`~aegis_tf.detect.state.ScanState`) keeps each class as soon as it is done and
    gives back those a resumed scan already made. Returns ``({class: Translation}, resumed)``."""
    from aegis_tf.detect.translation import Translation

    full = config.replace(scan="full")
    attack = translation_attack(model, full, pixel_max=pixel_max)
    translations, resumed = {}, 0
    for c in progress(promoted, quiet=quiet, desc="stage 2: full detector", unit="class"):
        saved = state.load_arrays(f"stage2_{c}") if state is not None else None
        if saved is not None:
            translations[c] = Translation(saved["images"], saved["seeds"], float(saved["reached"]), saved["starts"])
            resumed += 1
            continue
        translations.update(translate(model, x, y, [c], full, pixel_max=pixel_max, seed=chunk_seed(seed, c),
                                      batch_size=batch_size, attack_fn=attack))
        if state is not None:
            t = translations[c]
            state.save_arrays(f"stage2_{c}", images=t.images, seeds=t.seeds, reached=t.reached, starts=t.starts)
    return translations, resumed


def stage1_table(results, scores, promoted):
    """The report's ``stages.stage1``: per-class scores of every signal, and what was promoted."""
    return {str(c): {"transfer_score": scores["patch_transfer"][c],
                     **({"whole_image_gap": scores["whole_image"][c]} if "whole_image" in scores else {}),
                     **({"blend_gap": scores["blend_probe"][c]} if "blend_probe" in scores else {}),
                     "reached": results[c]["reached"], "flip_norm": results[c]["flip_norm"],
                     "promoted": c in promoted}
            for c in sorted(results)}


def top_line(scores, n=5):
    """``7:0.30, 2:0.10`` for the ``n`` highest scores."""
    best = sorted(scores, key=lambda c: (-scores[c], c))[:n]
    return ", ".join(f"{c}:{scores[c]:.2f}" for c in best)
