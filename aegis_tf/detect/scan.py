"""The detection job behind ``aegis detect`` and :func:`aegis_tf.scan`: scan, decide, report.

The path runs down once:

1. :func:`run_aegis` translates (a full scan translates every class; a staged
   scan screens every class, :mod:`aegis_tf.detect.staged`, and translates the
   promoted ones), saving its progress through one
   :class:`~aegis_tf.detect.state.ScanState`, then scores every signal on the
   translations (:func:`score_translations`);
2. :func:`run_neural_cleanse` runs the baseline when asked;
3. :func:`scan_model` turns their evidence into the one verdict
   (:func:`aegis_tf.detect.verdict.combine`; Neural Cleanse run beside AEGIS is
   shown in it but does not vote, and gets a verdict of its own under
   ``baselines``), measures how robust the model is
   (:mod:`aegis_tf.detect.robustness`) and returns a :class:`ScanResult`;
4. :meth:`ScanResult.save` draws the figures, writes the recovered triggers,
   ``detect.json`` and ``report.html``.

:func:`run_detect` is the job of the command line: it loads and checks every
input before any work, scans each model, saves each result in its folder, and
undoes a half-made report when it is interrupted (Ctrl-C), keeping the scan
state for ``--resume``.
"""

import copy
import dataclasses
import os
import time
from typing import Any

from aegis_tf.core.errors import AegisError
from aegis_tf.core.utils import no_partial_report, trigger_class, write_json
from aegis_tf.detect import staged
from aegis_tf.detect.clustering import AegisDetector, class_features
from aegis_tf.detect.config import check_method  # noqa: F401 (the scan job's check, kept importable here)
from aegis_tf.detect.neural_cleanse import NeuralCleanse
from aegis_tf.detect.patch_transfer import PairTransferDetector, PatchTransferDetector, probes_moved_histogram
from aegis_tf.detect.recovered import (from_blend_probe, from_mask_probe, from_neural_cleanse, from_pair_mask,
                                       from_pair_transfer, from_patch_transfer, from_warp_probe, from_whole_image,
                                       save_triggers)
from aegis_tf.detect.robustness import ROBUST_EPS, measure_robustness, robustness_line
from aegis_tf.detect.staged import blend_probe_on, probe_budget
from aegis_tf.detect.state import STATE_DIR, ScanState, fingerprint
from aegis_tf.detect.translation import translate
from aegis_tf.detect.verdict import combine, scan_limits
from aegis_tf.detect.mask_probe import MaskProbeDetector, mask_probe_on
from aegis_tf.detect.pair_probe import PairMaskDetector, candidate_pairs, pair_mask_mode
from aegis_tf.detect.warp_probe import WarpProbeDetector, warp_probe_on
from aegis_tf.detect.whole_image import BlendProbeDetector, WholeImageDetector

__all__ = ["ScanResult", "scan_model", "scan_into", "scan_info", "run_detect", "run_aegis", "run_neural_cleanse", "score_translations",
           "aegis_evidence", "format_summary", "parse_classes", "blend_probe_on", "detect_targets",
           "whole_image_threshold"]


@dataclasses.dataclass
class Found:
    """What a scan keeps to draw its figures and save its recovered triggers later
    (:meth:`ScanResult.save`): the fitted detectors, the translations and the images."""

    x: Any
    pixel_max: float
    translations: dict = None
    y: Any = None
    transfer: Any = None
    pairs: Any = None
    whole: Any = None
    blend: Any = None
    warp: Any = None
    mask: Any = None
    pair_mask: Any = None
    clusters: Any = None  # the fitted AegisDetector (the paper's score, or the embedding figure)
    decides_by_clusters: bool = False
    plots: bool = False  # draw the embedding figure
    nc: Any = None
    state: Any = None  # the scan's ScanState, cleared once its result is saved


def run_aegis(model, x, y, *, classes, config, pixel_max, out_dir=None, seed=0, batch_size=512, quiet=True,
              plots=False, n_jobs=1, resume=False, translations=None):
    """AEGIS on ``model`` with training images ``(x, y)``. Returns the report dict
    (with ``out_dir``, its figures and recovered triggers are written there too).

    ``config`` is a :class:`~aegis_tf.detect.config.DetectConfig`. With ``out_dir``, the
    scan saves its progress there as it goes (:mod:`aegis_tf.detect.state`), and
    ``resume`` continues an interrupted scan from it with the same numbers.
    ``translations`` (``{class: Translation}``) skips translating. With the transfer
    score, t-SNE and clustering run only for the embedding figure (``plots``).
    """
    report, found = aegis_scan(model, x, y, classes=classes, config=config, pixel_max=pixel_max, state_dir=out_dir,
                               seed=seed, batch_size=batch_size, quiet=quiet, plots=plots and out_dir is not None,
                               n_jobs=n_jobs, resume=resume, translations=translations)
    if out_dir is not None:
        t = time.perf_counter()
        report["files"] = write_aegis_files(report, found, out_dir)
        report["seconds"]["report"] = time.perf_counter() - t
        found.state.clear()  # the scan is done: nothing left to resume
    return report


def aegis_scan(model, x, y, *, classes, config, pixel_max, state_dir=None, seed=0, batch_size=512, quiet=True,
               plots=False, n_jobs=1, resume=False, translations=None, robust=None):
    """Translate (full or staged, resumable in ``state_dir``), then score every signal.
    Returns ``(report, found)``; nothing is drawn or written but the scan state, which
    stays until the caller has saved the result (``found.state.clear()``). ``robust``: what
    the robustness check measured (``None``: not measured; see :func:`score_translations`)."""
    mode = staged.scan_mode(config, len(classes))
    if mode == "staged":
        if len(classes) < 3:
            raise AegisError(f"a staged scan needs at least 3 classes to compare; {len(classes)} examined "
                             "(use --scan full)")
    state = ScanState.off()
    if state_dir is not None and translations is None:
        state = ScanState.open(state_dir, fingerprint(model, x, y, classes, config, seed, batch_size), resume=resume)
    times, stages, screen_gaps, examined = {}, None, {}, list(classes)
    t = time.perf_counter()
    if translations is not None:
        pass
    elif mode == "staged":
        translations, examined, stages, screen_gaps, times = _staged_translations(
            model, x, y, classes, config, pixel_max=pixel_max, seed=seed, batch_size=batch_size, state=state,
            quiet=quiet)
    else:
        done = _saved_rows(state)
        translations = translate(model, x, y, classes, config, pixel_max=pixel_max, seed=seed, batch_size=batch_size,
                                 quiet=quiet, done=done,
                                 save=lambda start, rows: state.save_arrays(f"rows_{start:09d}", rows=rows))
        times["translate"] = time.perf_counter() - t
    if "translate" not in times:
        times["translate"] = time.perf_counter() - t
    scoring, probes = config, {}
    if stages is not None:
        # Stage 2 scores the promoted classes; the probes that need no translations (warp, mask) run on
        # every class, as in a full scan, within their time budget.
        scoring = config.replace(scan="full", pair_mask={"all": True, "candidates": "candidates", None: False}[
            pair_mask_mode(config, "staged")])
        probes = {"probe_classes": classes, "budgets": {k: probe_budget(config, k, "staged")
                                                          for k in ("warp_probe", "mask_probe")}}
    report, found = score_translations(model, x, y, classes=examined, config=scoring, translations=translations,
                                       pixel_max=pixel_max, seed=seed, batch_size=batch_size, plots=plots,
                                       n_jobs=n_jobs, screen_gaps=screen_gaps.get("whole_image"),
                                       screen_blend_gaps=screen_gaps.get("blend_probe"), robust=robust, **probes)
    report["seconds"] = {**times, **report["seconds"]}
    if stages is not None:
        report["config"] = config.to_dict()
        report["stages"] = stages
    found.state = state
    return report, found


def _saved_rows(state):
    """The translations an interrupted full scan saved (contiguous chunks from row 0), or ``None``."""
    import numpy as np

    parts, n = [], 0
    while (part := state.load_arrays(f"rows_{n:09d}")) is not None:
        parts.append(part["rows"])
        n += len(parts[-1])
    return np.concatenate(parts) if parts else None


def _staged_translations(model, x, y, classes, config, *, pixel_max, seed, batch_size, state, quiet):
    """Stage 1 on every class, then stage 2's translations of the promoted ones
    (:mod:`aegis_tf.detect.staged`). Returns the translations, the promoted classes,
    the report's ``stages`` entry, the stage-1 gaps (``{"whole_image": {class: gap},
    "blend_probe": ...}``, the signals that ran) and the seconds."""
    t = time.perf_counter()
    saved = state.load_json("stage1")
    done = {int(c): r for c, r in saved.items()} if saved else {}
    results = staged.screen(model, x, y, classes, config, pixel_max=pixel_max, seed=seed, batch_size=batch_size,
                            done=done, save=lambda r: state.save_json("stage1", {str(c): v for c, v in sorted(r.items())}),
                            quiet=quiet)
    scores = staged.score_screen(results, config)
    promoted = staged.promote_all(scores, config)
    stage1_seconds = time.perf_counter() - t
    t = time.perf_counter()
    translations, resumed2 = staged.translate_promoted(model, x, y, promoted, config, pixel_max=pixel_max, seed=seed,
                                                       batch_size=batch_size, state=state, quiet=quiet)
    screen = staged.screen_config(config)
    stages = {"scan": "staged", "classes": len(classes), "promoted": promoted,
              "stage1": staged.stage1_table(results, scores, promoted),
              "stage1_settings": {"n_seeds": config.stage1_seeds, "steps": config.stage1_steps,
                                  "n_probes": screen.n_probes, "wi_probes": screen.wi_probes,
                                  "top_k": config.top_k, "alarm_transfer": config.alarm_transfer,
                                  "alarm_gap": config.alarm_gap},
              "resumed_classes": len(done), "resumed_stage2_classes": resumed2,
              "blend_probe": "on" if "blend_probe" in scores else "off",
              # one fit per class, no translations: every class, within probe_budget unless asked for
              **{k: ("off" if not on(config) else "every class" if probe_budget(config, k, "staged") is None
                     else f"every class, within {config.probe_budget:g} s")
                 for k, on in (("warp_probe", warp_probe_on), ("mask_probe", mask_probe_on))},
              "pair_mask": {"all": "promoted classes", "candidates": "the per-pair view's candidates",
                            None: "off"}[pair_mask_mode(config, "staged")]}
    times = {"stage1": stage1_seconds, "translate": time.perf_counter() - t}
    gaps = {k: scores[k] for k in ("whole_image", "blend_probe") if k in scores}
    return translations, promoted, stages, gaps, times


def score_translations(model, x, y, *, classes, config, translations, pixel_max, seed=0, batch_size=512, plots=False,
                       n_jobs=1, screen_gaps=None, screen_blend_gaps=None, robust=None, probe_classes=None,
                       budgets=None):
    """Every signal of the verdict on translations already made. Returns ``(report, found)``.

    ``robust=False`` (the robustness check measured the model as not robust) raises the
    whole-image signal's threshold to :func:`whole_image_threshold`; ``None`` (not
    measured) and ``True`` keep ``config.wi_threshold``.

    ``screen_gaps`` and ``screen_blend_gaps`` (a staged scan's stage-1 whole-image and
    blend gaps, against every class) must also reach ``config.alarm_gap`` for the
    whole-image signal and the blend probe to flag a class. A staged scan without
    stage-1 blend gaps runs no blend probe.

    ``probe_classes`` (default ``classes``) are the classes the warp and mask probes, which
    need no translations, fit and compare (a staged scan: every class); ``budgets``
    (``{"warp_probe": s, "mask_probe": s}``, None: no limit) the seconds each may take, projected
    from its first steps; one over its budget is reported as not run.
    """
    times = {}
    found = Found(x=x, y=y, pixel_max=pixel_max, translations=translations, plots=plots)
    clusters = config.score == "clusters"
    transfer = None
    if not clusters:
        t = time.perf_counter()
        transfer = PatchTransferDetector.from_config(config, pixel_max=pixel_max, random_state=seed,
                                                     batch_size=batch_size)
        transfer.fit(model, x, y, classes, translations=translations)
        times["patch_transfer"] = time.perf_counter() - t
    whole = None
    if config.whole_image and len(classes) >= (2 if screen_gaps is not None else 3):
        t = time.perf_counter()
        whole = WholeImageDetector(n_probes=config.wi_probes, threshold=whole_image_threshold(config, robust),
                                   pixel_max=pixel_max,
                                   random_state=seed, batch_size=batch_size)
        whole.fit(model, x, y, classes, translations=translations, screen_gaps=screen_gaps,
                  screen_threshold=config.alarm_gap)
        times["whole_image"] = time.perf_counter() - t
    pairs = None
    if config.pairs and config.score == "transfer" and len(classes) >= 2:
        t = time.perf_counter()
        pairs = PairTransferDetector(flip_at=config.flip_at, min_score=config.pair_min_score, top_frac=config.top_frac,
                                     n_probes=config.pair_probes, confirm_probes=config.pair_confirm_probes,
                                     retest=config.pair_retest, retest_below=config.pair_retest_below,
                                     translation=config, pixel_max=pixel_max,
                                     random_state=seed, batch_size=batch_size)
        pairs.fit(model, x, y, classes, translations=translations)
        times["pair_transfer"] = time.perf_counter() - t
    blend = None
    staged_scan = screen_gaps is not None
    if blend_probe_on(config) and (screen_blend_gaps is not None and len(classes) >= 2
                                   if staged_scan else len(classes) >= 3):
        t = time.perf_counter()
        blend = BlendProbeDetector(n_probes=config.wi_probes, threshold=config.wi_threshold, random_state=seed,
                                   batch_size=batch_size).fit(model, x, y, classes, translations=translations,
                                                              screen_gaps=screen_blend_gaps,
                                                              screen_threshold=config.alarm_gap)
        times["blend_probe"] = time.perf_counter() - t
    warp = None
    probe_classes, budgets = (classes if probe_classes is None else probe_classes), (budgets or {})
    if warp_probe_on(config) and len(probe_classes) >= 3 and min(x.shape[1:3]) >= config.warp_grid:
        t = time.perf_counter()
        warp = WarpProbeDetector.from_config(config, random_state=seed, batch_size=batch_size,
                                             budget_s=budgets.get("warp_probe"))
        warp.fit(model, x, y, probe_classes)
        times["warp_probe"] = time.perf_counter() - t
    mask = None
    if mask_probe_on(config) and len(probe_classes) >= 3:
        t = time.perf_counter()
        mask = MaskProbeDetector.from_config(config, pixel_max=pixel_max, random_state=seed, batch_size=batch_size,
                                             budget_s=budgets.get("mask_probe"))
        mask.fit(model, x, y, probe_classes)
        times["mask_probe"] = time.perf_counter() - t
    pair_mask = None
    # every pair (pair_mask True, or "auto" in a full scan), or the pairs the per-pair view saw transfer
    # without flagging them ("candidates", the default), each against its whole row and column
    pair_mode = pair_mask_mode(config)
    examine = None
    if pair_mode == "candidates" and pairs is not None:  # the probe fits pairs of the scanned classes only
        examine = candidate_pairs(pairs, classes=classes)
    if len(classes) >= 3 and (pair_mode == "all" or examine):
        t = time.perf_counter()
        pair_mask = PairMaskDetector.from_config(config, pixel_max=pixel_max, random_state=seed, batch_size=batch_size)
        pair_mask.fit(model, x, y, classes, examine=examine)
        times["pair_mask"] = time.perf_counter() - t
    det = None
    if clusters or plots:  # the cluster analysis decides in the paper's method; it is a picture in ours
        t = time.perf_counter()
        det = AegisDetector.from_config(config if clusters else config.replace(runs=1), pixel_max=pixel_max,
                                        random_state=seed, batch_size=batch_size, n_jobs=n_jobs)
        feats = class_features(model, x, y, translations, n_seeds=config.n_seeds, layer=config.layer, seed=seed,
                               batch_size=batch_size)
        times["features"] = time.perf_counter() - t
        det.fit_features(feats)
        times.update(det.seconds_)
    found.transfer, found.whole, found.blend, found.clusters, found.decides_by_clusters, found.pairs = (
        transfer, whole, blend, det, clusters, pairs)
    found.warp, found.mask, found.pair_mask = warp, mask, pair_mask
    main = det if clusters else transfer
    report = main.report()
    report["evidence"] = (main.evidence("translated images form more clusters than a clean class shows")
                          if clusters else
                          main.evidence(f"share of translations whose top {100 * config.top_frac:g}% pixels move "
                                        f">= {100 * config.flip_at:g}% of {config.n_probes} clean probes"))
    if not clusters:
        for c, entry in report["classes"].items():
            rates = transfer.rates_[int(c)]
            entry["probes_moved_histogram"] = probes_moved_histogram(rates[0], len(rates[2])).tolist()
            if det is not None:
                entry["clusters"] = det.counts_[int(c)]
    if whole is not None:
        report["whole_image"] = whole.report()
        if whole.threshold != config.wi_threshold:
            report["whole_image"]["threshold_note"] = _NONROBUST_NOTE.format(
                factor=config.wi_nonrobust_factor, threshold=config.wi_threshold)
        report["whole_image"]["evidence"] = whole.evidence(
            "the smallest other class's L2 norm over this class's, where a norm is how far the class's mean "
            f"translation direction must go to move >= {100 * whole.flip_at:g}% of {config.wi_probes} clean probes")
    if pairs is not None:
        report["pair_transfer"] = pairs.report()
        report["pair_transfer"]["evidence"] = pairs.evidence(
            f"share of the translations from each source class whose top {100 * config.top_frac:g}% pixels move "
            f">= {100 * config.flip_at:g}% of {config.pair_probes} clean probes of that source class (and of "
            f"{config.pair_probes + config.pair_confirm_probes} once {config.pair_confirm_probes} fresh ones are "
            f"added; a pair flagged under {config.pair_retest_below:g} is scored again with "
            f"{config.pair_retest}x its translations added); a target's "
            "score is its strongest source; a source whose patches move it toward more than "
            f"{pairs.max_targets} targets is fragile and flags none")
        report["pair_breadth"] = pairs.breadth_report()
        report["pair_breadth"]["evidence"] = pairs.breadth_evidence(
            f"share of the source classes with at least one translation whose top {100 * config.top_frac:g}% "
            f"pixels move >= {100 * config.flip_at:g}% of {config.pair_probes} clean probes of that source "
            f"(flagged with at least {pairs.min_sources} sources, fragile ones not counted): a trigger from every "
            "class, not one confusion")
    if blend is not None:
        report["blend_probe"] = blend.report()
        report["blend_probe"]["evidence"] = blend.evidence(
            "the smallest other class's blend weight over this class's, where a weight a is how much of the "
            f"class's mean translated image (1-a) x + a m moves >= {100 * blend.flip_at:g}% of "
            f"{config.wi_probes} clean probes")
    if warp is not None:
        report["warp_probe"] = warp.report()
        report["warp_probe"]["max_shift_px"] = warp.max_shift_px_
        report["warp_probe"]["evidence"] = warp.evidence(
            "the smallest other class's shift over this class's, where a shift (pixels) is the largest offset of "
            f"a smooth {warp.grid}x{warp.grid}-grid warp, fitted toward the class on {warp.n_fit} images of other "
            f"classes, that moves >= {100 * warp.flip_at:g}% of {config.wi_probes} fresh clean probes of other "
            f"classes (a class no warp up to {warp.max_shift_px_:.3g} pixels moves stays at that bound)")
    if mask is not None:
        report["mask_probe"] = mask.report()
        report["mask_probe"]["evidence"] = mask.evidence(mask.describe())
    if pair_mask is not None:
        report["pair_mask"] = pair_mask.report()
        report["pair_mask"]["evidence"] = pair_mask.evidence(pair_mask.describe())
    report.update(method="aegis", score=config.score, config=config.to_dict(),
                  translation_reached={str(c): translations[c].reached for c in classes}, files={})
    report["seconds"] = times
    return report, found


_NONROBUST_NOTE = ("{factor:g} times {threshold:g}: the robustness check measured the model as not robust, and "
                   "such a model has cheap universal additive perturbations toward some class without a backdoor")


def whole_image_threshold(config, robust):
    """The whole-image signal's threshold: ``config.wi_threshold``, times
    ``config.wi_nonrobust_factor`` on a model measured as not robust (``robust is False``).

    The signal moves clean probes along a class's mean translation direction, an additive
    perturbation. A model that loses most of its accuracy at L2 0.5 (a standard-trained
    CIFAR-10 net) has, for some class, a universal additive perturbation of small norm
    without any backdoor: on the standard ResNet-18s of the matrix, the mean direction toward
    truck moved 90% of the probes at 2.11-2.55 times less norm than any other class's
    (docs/detection.md). The blend probe mixes images rather than adding to them and keeps
    its threshold."""
    return float(config.wi_threshold) * (float(config.wi_nonrobust_factor) if robust is False else 1.0)


def write_aegis_files(report, found, out_dir):
    """Draw an AEGIS scan's figures and save its recovered triggers into ``out_dir``;
    returns the report's ``files`` entry."""
    from aegis_tf.detect import figures

    files = {}
    tr, x, pm = found.translations, found.x, found.pixel_max
    clusters = found.decides_by_clusters
    files["suspect_clusters" if clusters else "suspect_patches"] = (  # {} when nothing is suspect
        figures.cluster_grids(found.clusters, tr, out_dir, pm) if clusters
        else figures.transfer_grids(found.transfer, tr, x, out_dir, pm))
    if found.whole is not None:
        files["suspect_whole_image"] = figures.direction_grids(found.whole, tr, x, out_dir, pm)
    if found.blend is not None:
        files["suspect_blend"] = figures.blend_grids(found.blend, tr, x, out_dir, pm)
    if found.warp is not None:
        files["suspect_warp"] = figures.warp_grids(found.warp, x, found.y, out_dir, pm)
    if found.mask is not None:
        files["suspect_mask"] = figures.mask_grids(found.mask, x, found.y, out_dir, pm)
    if found.pair_mask is not None:
        files["suspect_pair_mask"] = figures.pair_mask_grids(found.pair_mask, x, found.y, out_dir, pm)
    files["triggers"] = _save_aegis_triggers(found, out_dir)
    if found.plots and found.clusters is not None:
        main = found.clusters if clusters else found.transfer
        marked = None if clusters else {c: found.transfer.rates_[c][0] >= found.transfer.flip_at
                                        for c in found.transfer.classes_}
        files["embeddings"] = figures.plot_embeddings(found.clusters, os.path.join(out_dir, "embeddings.png"),
                                                      main.suspect_classes_, marked=marked, verdict=report["verdict"])
    return files


def run_neural_cleanse(model, x, *, classes, pixel_max, out_dir=None, seed=0, quiet=True, plots=True, **nc_kwargs):
    """Neural Cleanse on ``model`` with clean images ``x``. Returns the report dict (with
    ``out_dir``, its mask figure and recovered triggers are written there too)."""
    report, found = neural_cleanse_scan(model, x, classes=classes, pixel_max=pixel_max, seed=seed, quiet=quiet,
                                        **nc_kwargs)
    if out_dir is not None:
        report["files"] = write_nc_files(found, out_dir, plots=plots)
    return report


def neural_cleanse_scan(model, x, *, classes, pixel_max, seed=0, quiet=True, **nc_kwargs):
    """Neural Cleanse's report and what it keeps for its files: ``(report, found)``."""
    t = time.perf_counter()
    nc = NeuralCleanse(pixel_max=pixel_max, random_state=seed, **nc_kwargs).fit(model, x, None, classes, quiet=quiet)
    report = nc.report()
    report["evidence"] = nc.evidence("MAD anomaly index of the smallest trigger's L1 norm (flagged below the median)")
    report["method"] = "neural-cleanse"
    report["seconds"] = {"reverse_engineer": time.perf_counter() - t}
    report["files"] = {}
    return report, Found(x=x, pixel_max=pixel_max, nc=nc)


def write_nc_files(found, out_dir, *, plots=True):
    """Neural Cleanse's mask figure (``plots``) and recovered triggers in ``out_dir``; returns ``files``."""
    files = {}
    nc, pm = found.nc, found.pixel_max
    if plots:
        from aegis_tf.detect.figures import mask_grid

        files["masks"] = mask_grid(nc, os.path.join(out_dir, "neural_cleanse_masks.png"), pixel_max=pm)
    files["triggers"] = save_triggers(out_dir, [from_neural_cleanse(nc, c, pixel_max=pm) for c in nc.suspect_classes_])
    return files


def aegis_evidence(report):
    """``{signal: evidence}`` of an AEGIS scan's report: its main score, and the per-pair view,
    whole-image signal, blend probe and warp probe where they ran (see :func:`aegis_tf.detect.verdict.combine`)."""
    evidence = {"clusters" if report["score"] == "clusters" else "patch_transfer": report["evidence"]}
    for key in ("pair_transfer", "pair_breadth", "whole_image", "blend_probe", "warp_probe", "mask_probe",
                "pair_mask"):
        if key in report:
            evidence[key] = report[key]["evidence"]
    return evidence


def _save_aegis_triggers(found, out_dir):
    """Save the trigger each AEGIS signal recovered for its flagged classes (see
    :mod:`aegis_tf.detect.recovered`); returns the file names."""
    tr, pm = found.translations, found.pixel_max
    out = []
    if found.transfer is not None:
        out += [from_patch_transfer(found.transfer, tr, c, pixel_max=pm) for c in found.transfer.suspect_classes_]
    if found.whole is not None:
        out += [from_whole_image(found.whole, tr, c, pixel_max=pm) for c in found.whole.suspect_classes_]
    if found.pairs is not None:  # the source-specific and all-to-all backdoors, with their sources
        out += [from_pair_transfer(found.pairs, tr, found.y, c, pixel_max=pm) for c in found.pairs.suspect_classes_]
        out += [from_pair_transfer(found.pairs, tr, found.y, c, pixel_max=pm, breadth=True)
                for c in found.pairs.broad_targets_]
    if found.blend is not None:
        out += [from_blend_probe(found.blend, tr, c, pixel_max=pm) for c in found.blend.suspect_classes_]
    if found.warp is not None:
        out += [from_warp_probe(found.warp, c, pixel_max=pm, image_shape=tuple(found.x.shape[1:]))
                for c in found.warp.suspect_classes_]
    if found.mask is not None:
        out += [from_mask_probe(found.mask, c, pixel_max=pm) for c in found.mask.suspect_classes_]
    if found.pair_mask is not None:
        out += [from_pair_mask(found.pair_mask, c, pixel_max=pm) for c in found.pair_mask.suspect_classes_]
    return save_triggers(out_dir, out)


def format_summary(report, name):
    """The lines printed under a detector's part of the scan."""
    label = "aegis patch transfer" if report.get("score") == "transfer" else report["method"]
    lines = [f"  {label}: {report['verdict']}"
             + (f", suspect class(es) {', '.join(map(str, report['suspect_classes']))}" if report["suspect_classes"] else "")]
    if report["method"] == "aegis":
        if report["score"] == "transfer":
            scores = ", ".join(f"{c}:{v['transfer_score']:.2f}" for c, v in report["classes"].items())
            lines.append(f"    share of translations whose patch transfers, per class: {scores}")
        else:
            counts = ", ".join(f"{c}:{'/'.join(map(str, v['clusters']))}" for c, v in report["classes"].items())
            lines.append(f"    clusters per class (per t-SNE run): {counts}")
        for key, label, gap, what in (("whole_image", "whole-image", "whole_image_gap", "norm"),
                                      ("blend_probe", "blend probe", "blend_gap", "blend weight"),
                                      ("warp_probe", "warp probe", "warp_gap", "warp shift"),
                                      ("mask_probe", "mask probe", "mask_gap", "mask norm")):
            if key not in report:
                continue
            idx = ", ".join(f"{c}:{v[gap]:.2f}" for c, v in report[key]["classes"].items())
            flagged = report[key]["suspect_classes"]
            state = ("not run: " + report[key]["skipped"] if report[key].get("skipped") else
                     "inconclusive: " + report[key]["inconclusive"] if report[key].get("inconclusive") else
                     "backdoored, class(es) " + ", ".join(map(str, flagged)) if flagged else "clean")
            lines.append(f"  aegis {label}: {state}")
            if idx:
                lines.append(f"    gap per class (nearest other class's {what} / own): {idx}")
        if "pair_transfer" in report:
            pt = report["pair_transfer"]
            pairs = pt["evidence"]["pairs"]
            lines.append("  aegis pair transfer: " + ("backdoored, pairs (source, target) "
                                                      + ", ".join(f"{s}->{t}" for s, t in pairs) if pairs else "clean"))
            top = sorted(((int(s), int(t), v) for t, e in pt["classes"].items() for s, v in e["sources"].items()),
                         key=lambda r: (-r[2], r[0], r[1]))[:5]
            lines.append("    highest pair shares (source->target): "
                         + ", ".join(f"{s}->{t}:{v:.2f}" for s, t, v in top))
        if "pair_mask" in report:
            pm_ = report["pair_mask"]
            state = ("not run: " + pm_["skipped"] if pm_.get("skipped") else
                     "inconclusive: " + pm_["inconclusive"] if pm_.get("inconclusive") else
                     "backdoored, pairs (source, target) " + ", ".join(f"{s}->{t}" for s, t in pm_["flagged_pairs"])
                     if pm_["flagged_pairs"] else "clean")
            lines.append(f"  aegis pair mask: {state}")
            # on candidates only the examined pairs have a gap (their rows and columns are rivals)
            top = sorted(((k, v) for k, v in pm_["pairs"].items() if "gap" in v), key=lambda kv: -kv[1]["gap"])[:5]
            if top:
                lines.append("    highest pair gaps (source->target: gap, norm): "
                             + ", ".join(f"{k}: {v['gap']:.2f}, {v['norm']:.1f}" for k, v in top))
        if "pair_breadth" in report:
            pb = report["pair_breadth"]
            broad = pb["suspect_classes"]
            lines.append("  aegis source breadth: " + ("backdoored, class(es) " + ", ".join(
                f"{c} (from {len(pb['classes'][str(c)]['sources'])} sources)" for c in broad) if broad else "clean"))
            widest = sorted(pb["classes"].items(), key=lambda kv: (-kv[1]["breadth"], int(kv[0])))[:3]
            lines.append("    sources whose patches moved their own probes, per target: "
                         + ", ".join(f"{c}:{v['breadth']}" for c, v in widest))
        low = [c for c, r in report["translation_reached"].items() if r < 0.9]
        if low:
            lines.append(f"    warning: translation reached fewer than 90% for class(es) {', '.join(low)}")
    else:
        idx = ", ".join(f"{c}:{v['anomaly_index']:.2f}" for c, v in report["classes"].items())
        lines.append(f"    anomaly index per class: {idx}")
    if "stages" in report:
        st = report["stages"]
        stage1 = {k: {int(c): v[k] for c, v in st["stage1"].items() if k in v}
                  for k in ("transfer_score", "whole_image_gap", "blend_gap")}
        lines.append(f"    staged scan: stage 1 screened {st['classes']} classes "
                     f"({st['stage1_settings']['n_seeds']} seeds x {st['stage1_settings']['steps']} steps); "
                     f"stage 2 ran the full detector on {len(st['promoted'])}: {', '.join(map(str, st['promoted']))}")
        lines.append(f"    stage 1 highest patch share: {staged.top_line(stage1['transfer_score'])}")
        if stage1["whole_image_gap"]:
            lines.append(f"    stage 1 highest whole-image gap: {staged.top_line(stage1['whole_image_gap'])}")
        if stage1["blend_gap"]:
            lines.append(f"    stage 1 highest blend gap: {staged.top_line(stage1['blend_gap'])}")
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in report["seconds"].items())
    lines.append(f"    time: {secs}")
    return "\n".join(lines)


def parse_classes(text, n_classes):
    """The classes to examine: all of them, or those in a comma-separated list."""
    if text is None:
        return list(range(n_classes))
    try:
        classes = sorted({int(c) for c in str(text).split(",") if c.strip()})
    except ValueError:
        raise AegisError(f"--classes must be comma-separated class numbers. Received: {text}") from None
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad or not classes:
        raise AegisError(f"--classes must lie in 0..{n_classes - 1}. Received: {text}")
    return classes


def _targets(bad_model, bad_model_weights):
    """(name, model path, weights path) of each model to scan: the one named, or the embedded pair."""
    from aegis_tf.core.embedded import PATHS

    if bad_model is None and bad_model_weights is None:
        return [("robust_bd_net", PATHS["robust_bd_net"], None), ("robust_clean_net", PATHS["robust_clean_net"], None)]
    name = os.path.splitext(os.path.basename(bad_model or bad_model_weights))[0]
    return [(name, bad_model, bad_model_weights)]


class ScanResult:
    """One model's scan: the verdict and every detector's report, frozen.

    ``backdoored``, ``target_classes``, ``evidence`` (``{signal: evidence}``) and
    ``line`` (the console line) read the verdict; ``to_dict()`` is the JSON-ready
    result (``detect.json`` less the files a save writes); ``save(out_dir)``
    draws the figures and writes the recovered triggers, ``detect.json`` and
    ``report.html`` into ``out_dir``, and returns what ``detect.json`` holds.
    """

    __slots__ = ("name", "_result", "_found")

    def __init__(self, name, result, found=None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_result", copy.deepcopy(result))
        object.__setattr__(self, "_found", dict(found or {}))

    def __setattr__(self, key, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}: a ScanResult is frozen")

    def __delattr__(self, key):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {key!r}: a ScanResult is frozen")

    def __copy__(self):
        return self  # frozen: a copy would be the same

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        """Pickled (or sent to another process) without the fitted detectors: the copy's
        :meth:`save` writes ``detect.json`` and ``report.html``, not the figures or triggers."""
        return ScanResult, (self.name, self._result)

    def __repr__(self):
        return f"ScanResult({self.name!r}: {self.line})"

    @property
    def verdict(self):
        return copy.deepcopy(self._result["verdict"])

    @property
    def backdoored(self):
        return bool(self._result["verdict"]["backdoored"])

    @property
    def target_classes(self):
        return list(self._result["verdict"]["target_classes"])

    @property
    def evidence(self):
        return copy.deepcopy(self._result["verdict"]["evidence"])

    @property
    def line(self):
        return self._result["verdict"]["line"]

    def to_dict(self):
        return copy.deepcopy(self._result)

    def clear_state(self):
        """Remove the scan's saved progress (``--resume``), once its result is saved."""
        for found in self._found.values():
            if found.state is not None:
                found.state.clear()

    def summary(self):
        """The verdict line and each detector's details, as the command line prints them."""
        return "\n".join(self._summary_parts())

    def _summary_parts(self):
        parts = [f"{self.name}: {self.line}"]
        nc = (self._result.get("baselines") or {}).get("neural_cleanse")
        if nc:
            parts.append(f"  neural cleanse (baseline, not in the verdict): {nc['line']}")
        if self._result.get("robustness"):
            parts.append(f"  robustness: {robustness_line(self._result['robustness'])}")
        return parts + [format_summary(self._result[k], self.name)
                        for k in ("aegis", "neural_cleanse") if k in self._result]

    def save(self, out_dir):
        """Write the figures, the recovered triggers, ``detect.json`` and ``report.html`` into
        ``out_dir``; returns the saved result (``detect.json``). An interrupted or failed save
        leaves no half-made report (the scan state for ``--resume`` stays)."""
        from aegis_tf.report.html import write_detect_html

        result = self.to_dict()
        with no_partial_report(out_dir, keep=(STATE_DIR,)):
            os.makedirs(out_dir, exist_ok=True)
            if "aegis" in result and "aegis" in self._found:
                t = time.perf_counter()
                result["aegis"]["files"] = write_aegis_files(result["aegis"], self._found["aegis"], out_dir)
                result["aegis"]["seconds"]["report"] = time.perf_counter() - t
            if "neural_cleanse" in result and "neural_cleanse" in self._found:
                result["neural_cleanse"]["files"] = write_nc_files(self._found["neural_cleanse"], out_dir)
            # The recovered triggers of the verdict's classes, for `aegis repair --trigger-from`.
            result["triggers"] = [n for key in ("aegis", "neural_cleanse") if key in result
                                  for n in result[key]["files"].get("triggers", [])
                                  if trigger_class(n) in result["verdict"]["target_classes"]]
            write_json(os.path.join(out_dir, "detect.json"), result)
            write_detect_html(result, os.path.join(out_dir, "report.html"), title=f"aegis detect: {self.name}")
        return result


def scan_model(model, x, y, *, classes, config, pixel_max, method="aegis", name="model", info=None, state_dir=None,
               seed=0, batch_size=256, quiet=True, plots=False, n_jobs=1, resume=False, robustness_eps=ROBUST_EPS):
    """Scan one loaded model with its (checked) training images: AEGIS, Neural Cleanse or
    both (``method``), then one verdict. Returns a :class:`ScanResult` (nothing written but
    the scan state in ``state_dir``; see :meth:`ScanResult.save`). ``info`` (model and data
    paths, scale) goes into the result as it is.

    With ``both``, AEGIS decides: Neural Cleanse's evidence is shown in the verdict but
    marked ``"decides": False``, and its own verdict goes to ``baselines["neural_cleanse"]``.
    With ``aegis`` or ``both``, ``config.robustness_images`` training images (0: none) measure
    the model's robustness at L2 radius ``robustness_eps`` (units of [0, 1]; see
    :mod:`aegis_tf.detect.robustness`) into ``robustness`` (``None`` when not measured),
    before the scan: on a model measured as not robust the whole-image signal needs
    :func:`whole_image_threshold` (recorded as ``robustness["whole_image_threshold"]``).
    """
    result, found, evidence, baselines, robustness = dict(info or {}), {}, {}, {}, None
    if method in ("aegis", "both"):
        if config.robustness_images > 0:  # first: on a model that is not robust, the whole-image signal needs more
            t = time.perf_counter()
            robustness = measure_robustness(model, x, y, eps=robustness_eps, pixel_max=pixel_max,
                                            n_images=config.robustness_images, seed=seed, batch_size=batch_size)
            robustness["seconds"] = time.perf_counter() - t
            if config.whole_image:
                robustness["whole_image_threshold"] = whole_image_threshold(config, robustness["robust"])
        result["aegis"], found["aegis"] = aegis_scan(
            model, x, y, classes=classes, config=config, pixel_max=pixel_max, state_dir=state_dir, seed=seed,
            batch_size=batch_size, quiet=quiet, plots=plots, n_jobs=n_jobs, resume=resume,
            robust=None if robustness is None else robustness["robust"])
        evidence.update(aegis_evidence(result["aegis"]))
    if method in ("neural-cleanse", "both"):
        result["neural_cleanse"], found["neural_cleanse"] = neural_cleanse_scan(
            model, x, classes=classes, pixel_max=pixel_max, seed=seed, quiet=quiet)
        nc = result["neural_cleanse"]["evidence"]
        if method == "both":  # a baseline beside the verdict, not a vote in it
            alone = combine({"neural_cleanse": nc})
            baselines["neural_cleanse"] = {k: alone[k] for k in ("backdoored", "target_classes", "line", "score")}
            nc = {**nc, "decides": False}
        evidence["neural_cleanse"] = nc
    limits = model_limits(model, y, classes, result.get("aegis"))
    result = {"verdict": combine(evidence, limits), "baselines": baselines, **result, "robustness": robustness,
              "triggers": []}
    return ScanResult(name, result, found)


def model_limits(model, y, classes, aegis=None):
    """:func:`aegis_tf.detect.verdict.scan_limits` of a scan: the model's classes, the training
    images of each examined class (``y``: their labels; ``None``: not counted), and (``aegis``: its
    report) how far the translations reached."""
    import numpy as np

    from aegis_tf.core.models import num_classes

    counts = {}
    if y is not None:  # one pass over the labels, not one per class (1,283 classes on the CSAW net)
        labels, n = np.unique(np.asarray(y).astype("int64"), return_counts=True)
        found = dict(zip(labels.tolist(), n.tolist()))
        counts = {int(c): int(found.get(int(c), 0)) for c in classes}
    reached = (aegis or {}).get("translation_reached")
    return scan_limits(n_classes=num_classes(model), class_counts=counts, reached=reached)


def scan_info(model_file, weights_file, data, scale):
    """What a result records of its inputs: the model and weights files, the data, the scale."""
    return {"model": model_file or weights_file, "model_file": model_file, "weights_file": weights_file,
            "data": data, "scale": scale}


def scan_into(folder, model, x, y, *, keep=(), echo=None, **scan):
    """:func:`scan_model` (``scan``: its keyword arguments) with its progress kept in ``folder``,
    then the result saved there (:meth:`ScanResult.save`); returns what ``detect.json`` holds.
    ``echo`` receives the console lines. An interruption (Ctrl-C included) leaves no half-made
    report, only the scan state to resume from (and ``keep``, other files of the folder)."""
    with no_partial_report(folder, keep=(STATE_DIR, *keep)):
        scanned = scan_model(model, x, y, state_dir=folder, **scan)
        if echo is not None:
            for part in scanned._summary_parts():
                echo(part)
        saved = scanned.save(folder)
    scanned.clear_state()  # saved: nothing left to resume
    return saved


def check_jobs(n_jobs):
    if not (n_jobs == -1 or (isinstance(n_jobs, int) and n_jobs >= 1)):
        raise AegisError(f"--jobs must be a positive integer or -1. Received: {n_jobs}")


def examined_classes(model, y, classes, method, source):
    """The classes to examine for ``model``, checked against the labels ``y`` of ``source``."""
    examined = parse_classes(classes, int(model.output_shape[-1]))
    missing = [c for c in examined if not (y == c).any()]
    if missing and method != "neural-cleanse":
        raise AegisError(f"{source} has no images of class(es) {', '.join(map(str, missing[:10]))}; "
                         "AEGIS needs training images of every examined class (use --classes)")
    return examined


def detect_targets(bad_model=None, bad_model_weights=None, out_dir=None):
    """``[(name, model path, weights path, folder)]``: the model named, or the embedded pair, and
    the report folder of each (``out_dir`` for one model, ``out_dir/NAME`` for several)."""
    targets = _targets(bad_model, bad_model_weights)
    return [(name, path, weights, None if out_dir is None else
             (os.path.join(out_dir, name) if len(targets) > 1 else out_dir)) for name, path, weights in targets]


def run_detect(*, config, bad_model=None, bad_model_weights=None, data=None, data_dir=None, scale="raw",
               method="aegis", classes=None, out_dir=os.path.join("out", "detect"), seed=0, batch_size=256,
               quiet=True, plots=False, n_jobs=1, echo=print, resume=False):
    """Scan the named model (or the embedded robust pair). Returns ``{name: saved result}``.

    Every input is loaded and checked before any work. Each model's folder
    (``out_dir``, or ``out_dir/NAME`` for several) gets ``detect.json`` and
    ``report.html``; ``echo`` receives the verdict line and the details. An
    interrupted scan (Ctrl-C included) leaves no half-made report, only the scan
    state that ``resume`` continues from.
    """
    from aegis_tf.core.data import check_fits_model, load_split
    from aegis_tf.core.embedded import PATHS
    from aegis_tf.core.models import load_model
    from aegis_tf.core.settings import pixel_max_of

    from aegis_tf.core.utils import check_out_dir

    check_method(method)
    check_jobs(n_jobs)
    check_out_dir(out_dir)
    data = data or PATHS["train"]
    x_data, y = load_split(data, split="train", data_dir=data_dir, scale=scale)
    loaded = []
    for name, path, weights, folder in detect_targets(bad_model, bad_model_weights, out_dir):
        model = load_model(path, weights)
        x = check_fits_model(x_data, y, model, f"--data {data}")
        examined = examined_classes(model, y, classes, method, f"--data {data}")
        loaded.append((name, (path, weights), model, x, examined, folder))
    pm = pixel_max_of(scale)
    results = {}
    for name, (path, weights), model, x, examined, folder in loaded:
        results[name] = scan_into(folder, model, x, y, classes=examined, config=config, pixel_max=pm, method=method,
                                  name=name, info=scan_info(path, weights, data, scale), seed=seed,
                                  batch_size=batch_size, quiet=quiet, plots=plots, n_jobs=n_jobs, resume=resume,
                                  echo=echo)
    echo(f"report: {out_dir}")
    for (name, *_, folder), result in zip(loaded, results.values()):  # where `repair --trigger-from` finds them
        if result.get("triggers"):
            echo(f"{name}: recovered trigger(s) {', '.join(result['triggers'])}; repair from them with "
                 f"`repair --trigger-from {folder}`")
    return results
