"""The detection job behind ``aegis detect``: load, check, scan, report.

:func:`run_detect` takes what the command line names (paths, a
:class:`~aegis_tf.detect.config.DetectConfig`, the method) and writes, per model,
``detect.json`` (one combined verdict plus each detector's report) and
``report.html`` beside it. :func:`run_aegis` and :func:`run_neural_cleanse`
are the two scans, usable on a model already in memory.
"""

import os
import shutil
import time

from aegis_tf.detect.clustering import AegisDetector, class_features
from aegis_tf.core.errors import AegisError
from aegis_tf.detect.neural_cleanse import NeuralCleanse
from aegis_tf.detect.patch_transfer import PatchTransferDetector, probes_moved_histogram
from aegis_tf.detect.recovered import (from_blend_probe, from_neural_cleanse, from_patch_transfer, from_whole_image,
                                 save_triggers, trigger_class)
from aegis_tf.detect import staged
from aegis_tf.detect.translation import translate, translation_attack
from aegis_tf.core.utils import progress
from aegis_tf.detect.verdict import combine
from aegis_tf.detect.whole_image import BlendProbeDetector, WholeImageDetector

__all__ = ["run_detect", "run_aegis", "run_neural_cleanse", "format_summary", "parse_classes", "blend_probe_on"]


def run_aegis(model, x, y, *, classes, config, pixel_max, out_dir, seed=0, batch_size=512, quiet=True, plots=False,
              n_jobs=1, resume=False, translations=None, screen_gaps=None):
    """AEGIS on ``model`` with training images ``(x, y)``. Returns the report dict.

    ``config`` is a :class:`~aegis_tf.detect.config.DetectConfig`. With the transfer
    score, t-SNE and clustering run only for the embedding figure
    (``plots``); the suspect classes' patch grids are always drawn (they are
    cheap, and the HTML report shows them) into ``out_dir``; with
    ``out_dir=None`` no figure is drawn. ``n_jobs`` classes are reduced
    and clustered at once (threads; the report does not depend on it).
    A staged scan (``config.scan``, :mod:`aegis_tf.detect.staged`) screens every class
    first. With ``out_dir``, a scan saves its progress there as it goes (a
    staged scan its stage-1 results and stage-2 translations, a full scan its
    translations), and ``resume`` continues an interrupted scan from it with
    the same numbers. ``translations`` (``{class: Translation}``) skips
    translating; ``screen_gaps`` (a staged scan's stage-1 whole-image gaps, against every
    class) must also reach ``config.alarm_gap`` for the whole-image signal to
    flag a class.
    """
    if staged.scan_mode(config, len(classes)) == "staged":
        if config.wi_blend is True:  # asked for by name; "auto" skips it here
            raise AegisError("--blend-probe works with the full scan only; add --scan full, or leave "
                             "--blend-probe out (a staged scan skips the probe)")
        if len(classes) < 3:
            raise AegisError(f"a staged scan needs at least 3 classes to compare; {len(classes)} examined "
                             "(use --scan full)")
        return _run_staged(model, x, y, classes=classes, config=config, pixel_max=pixel_max, out_dir=out_dir,
                           seed=seed, batch_size=batch_size, quiet=quiet, plots=plots, n_jobs=n_jobs, resume=resume)
    times = {}
    t = time.perf_counter()
    rows_file = None
    if translations is None:
        translations, rows_file = _translate_resumable(model, x, y, classes, config, pixel_max=pixel_max, seed=seed,
                                                       batch_size=batch_size, out_dir=out_dir, resume=resume,
                                                       quiet=quiet)
    times["translate"] = time.perf_counter() - t
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
        whole = WholeImageDetector(n_probes=config.wi_probes, threshold=config.wi_threshold, pixel_max=pixel_max,
                                   random_state=seed, batch_size=batch_size)
        whole.fit(model, x, y, classes, translations=translations, screen_gaps=screen_gaps,
                  screen_threshold=config.alarm_gap)
        times["whole_image"] = time.perf_counter() - t
    blend = None
    if blend_probe_on(config) and len(classes) >= 3 and screen_gaps is None:
        t = time.perf_counter()
        blend = BlendProbeDetector(n_probes=config.wi_probes, threshold=config.wi_threshold, random_state=seed,
                                   batch_size=batch_size).fit(model, x, y, classes, translations=translations)
        times["blend_probe"] = time.perf_counter() - t
    det = None
    plots = plots and out_dir is not None
    if clusters or plots:  # the cluster analysis decides in the paper's method; it is a picture in ours
        t = time.perf_counter()
        det = AegisDetector.from_config(config if clusters else config.replace(runs=1), pixel_max=pixel_max,
                                        random_state=seed, batch_size=batch_size, n_jobs=n_jobs)
        feats = class_features(model, x, y, translations, n_seeds=config.n_seeds, layer=config.layer, seed=seed,
                               batch_size=batch_size)
        times["features"] = time.perf_counter() - t
        det.fit_features(feats)
        times.update(det.seconds_)
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
        report["whole_image"]["evidence"] = whole.evidence(
            "the smallest other class's L2 norm over this class's, where a norm is how far the class's mean "
            f"translation direction must go to move >= {100 * whole.flip_at:g}% of {config.wi_probes} clean probes")
    if blend is not None:
        report["blend_probe"] = blend.report()
        report["blend_probe"]["evidence"] = blend.evidence(
            "the smallest other class's blend weight over this class's, where a weight a is how much of the "
            f"class's mean translated image (1-a) x + a m moves >= {100 * blend.flip_at:g}% of "
            f"{config.wi_probes} clean probes")
    report.update(method="aegis", score=config.score, config=config.to_dict(),
                  translation_reached={str(c): translations[c].reached for c in classes}, files={})
    if out_dir is None:
        report["seconds"] = times
        return report
    from aegis_tf.detect import figures

    t = time.perf_counter()
    files = report["files"]
    files["suspect_clusters" if clusters else "suspect_patches"] = (  # {} when nothing is suspect
        figures.cluster_grids(det, translations, out_dir, pixel_max) if clusters
        else figures.transfer_grids(transfer, translations, x, out_dir, pixel_max))
    if whole is not None:
        files["suspect_whole_image"] = figures.direction_grids(whole, translations, x, out_dir, pixel_max)
    if blend is not None:
        files["suspect_blend"] = figures.blend_grids(blend, translations, x, out_dir, pixel_max)
    files["triggers"] = _save_aegis_triggers(transfer, whole, blend, translations, out_dir, pixel_max)
    if plots:
        marked = None if clusters else {c: transfer.rates_[c][0] >= transfer.flip_at for c in classes}
        files["embeddings"] = figures.plot_embeddings(det, os.path.join(out_dir, "embeddings.png"),
                                                      main.suspect_classes_, marked=marked, verdict=report["verdict"])
    times["report"] = time.perf_counter() - t
    report["seconds"] = times
    if rows_file is not None:  # the scan is done: nothing left to resume
        shutil.rmtree(rows_file, ignore_errors=True)
    return report


def _translate_resumable(model, x, y, classes, config, *, pixel_max, seed, batch_size, out_dir, resume, quiet):
    """A full scan's translations, saved in ``out_dir`` as they are made so that
    ``resume`` continues an interrupted scan; returns them and the state file."""
    if out_dir is None:
        return translate(model, x, y, classes, config, pixel_max=pixel_max, seed=seed, batch_size=batch_size,
                         quiet=quiet), None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, staged.ROWS_FILE)
    key = staged.fingerprint(model, x, y, classes, config, seed, batch_size)
    done = staged.load_rows(path, key) if resume else None
    found = translate(model, x, y, classes, config, pixel_max=pixel_max, seed=seed, batch_size=batch_size,
                      quiet=quiet, done=done, save=lambda start, rows: staged.save_rows(path, key, start, rows))
    return found, path


def _run_staged(model, x, y, *, classes, config, pixel_max, out_dir, seed, batch_size, quiet, plots, n_jobs, resume):
    """Stage 1 on every class, stage 2 (the full detector) on the promoted ones; see :mod:`aegis_tf.detect.staged`."""
    t = time.perf_counter()
    state = os.path.join(out_dir, staged.STATE_FILE) if out_dir is not None else None
    key = staged.fingerprint(model, x, y, classes, config, seed, batch_size) if state is not None else None
    done = staged.load_state(state, key) if resume and state is not None else {}
    save = (lambda results: staged.save_state(state, key, results)) if state is not None else None
    results = staged.screen(model, x, y, classes, config, pixel_max=pixel_max, seed=seed, batch_size=batch_size,
                            done=done, save=save, quiet=quiet)
    scores = staged.score_screen(results, config)
    promoted = staged.promote_all(scores, config)
    stage1_seconds = time.perf_counter() - t

    t = time.perf_counter()
    full = config.replace(scan="full")
    attack = translation_attack(model, full, pixel_max=pixel_max)
    stage2 = os.path.join(out_dir, staged.STAGE2_FILE) if out_dir is not None else None
    translations = staged.load_stage2(stage2, key) if resume and stage2 is not None else {}
    translations = {c: tr for c, tr in translations.items() if c in promoted}
    resumed2 = len(translations)
    for c in progress(promoted, quiet=quiet, desc="stage 2: full detector", unit="class"):
        if c in translations:
            continue
        translations.update(translate(model, x, y, [c], full, pixel_max=pixel_max, seed=staged.chunk_seed(seed, c),
                                      batch_size=batch_size, attack_fn=attack))
        if stage2 is not None:
            staged.save_stage2(stage2, key, translations)
    translate_seconds = time.perf_counter() - t
    screen = staged.screen_config(config)
    report = run_aegis(model, x, y, classes=promoted, config=full, pixel_max=pixel_max, out_dir=out_dir, seed=seed,
                       batch_size=batch_size, quiet=quiet, plots=plots, n_jobs=n_jobs, translations=translations,
                       screen_gaps=scores.get("whole_image"))
    report["config"] = config.to_dict()
    report["seconds"] = {"stage1": stage1_seconds, **report["seconds"], "translate": translate_seconds}
    report["stages"] = {"scan": "staged", "classes": len(classes), "promoted": promoted,
                        "stage1": staged.stage1_table(results, scores, promoted),
                        "stage1_settings": {"n_seeds": config.stage1_seeds, "steps": config.stage1_steps,
                                            "n_probes": screen.n_probes, "wi_probes": screen.wi_probes,
                                            "top_k": config.top_k, "alarm_transfer": config.alarm_transfer,
                                            "alarm_gap": config.alarm_gap},
                        "resumed_classes": len(done), "resumed_stage2_classes": resumed2,
                        "blend_probe": "not run (full scan only)" if blend_probe_on(config) else "off"}
    if stage2 is not None and os.path.exists(stage2):  # the scan is done: nothing left to resume
        os.remove(stage2)
    return report


def blend_probe_on(config):
    """Whether a full scan runs the blend probe: ``wi_blend=True``, or the
    default ``"auto"`` with the whole-image signal on (off in the paper preset)."""
    return config.wi_blend is True or (config.wi_blend == "auto" and bool(config.whole_image))


def run_neural_cleanse(model, x, *, classes, pixel_max, out_dir, seed=0, quiet=True, plots=True, **nc_kwargs):
    """Neural Cleanse on ``model`` with clean images ``x``. Returns the report dict."""
    t = time.perf_counter()
    nc = NeuralCleanse(pixel_max=pixel_max, random_state=seed, **nc_kwargs).fit(model, x, None, classes, quiet=quiet)
    report = nc.report()
    report["evidence"] = nc.evidence("MAD anomaly index of the smallest trigger's L1 norm (flagged below the median)")
    report["method"] = "neural-cleanse"
    report["seconds"] = {"reverse_engineer": time.perf_counter() - t}
    report["files"] = {}
    if plots:
        from aegis_tf.detect.figures import mask_grid

        report["files"]["masks"] = mask_grid(nc, os.path.join(out_dir, "neural_cleanse_masks.png"),
                                             pixel_max=pixel_max)
    if out_dir is not None:
        report["files"]["triggers"] = save_triggers(
            out_dir, [from_neural_cleanse(nc, c, pixel_max=pixel_max) for c in nc.suspect_classes_])
    return report


def aegis_evidence(report):
    """``{signal: evidence}`` of an AEGIS scan's report: its main score, and the
    whole-image signal and blend probe where they ran (see :func:`aegis_tf.detect.verdict.combine`)."""
    evidence = {"clusters" if report["score"] == "clusters" else "patch_transfer": report["evidence"]}
    for key in ("whole_image", "blend_probe"):
        if key in report:
            evidence[key] = report[key]["evidence"]
    return evidence


def _save_aegis_triggers(transfer, whole, blend, translations, out_dir, pixel_max):
    """Save the trigger each AEGIS signal recovered for its flagged classes (see
    :mod:`aegis_tf.detect.recovered`); returns the file names."""
    found = []
    if transfer is not None:
        found += [from_patch_transfer(transfer, translations, c, pixel_max=pixel_max)
                  for c in transfer.suspect_classes_]
    if whole is not None:
        found += [from_whole_image(whole, translations, c, pixel_max=pixel_max) for c in whole.suspect_classes_]
    if blend is not None:
        found += [from_blend_probe(blend, translations, c, pixel_max=pixel_max) for c in blend.suspect_classes_]
    return save_triggers(out_dir, found)


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
                                      ("blend_probe", "blend probe", "blend_gap", "blend weight")):
            if key not in report:
                continue
            idx = ", ".join(f"{c}:{v[gap]:.2f}" for c, v in report[key]["classes"].items())
            flagged = report[key]["suspect_classes"]
            lines.append(f"  aegis {label}: {'backdoored, class(es) ' + ', '.join(map(str, flagged)) if flagged else 'clean'}")
            lines.append(f"    gap per class (nearest other class's {what} / own): {idx}")
        low = [c for c, r in report["translation_reached"].items() if r < 0.9]
        if low:
            lines.append(f"    warning: translation reached fewer than 90% for class(es) {', '.join(low)}")
    else:
        idx = ", ".join(f"{c}:{v['anomaly_index']:.2f}" for c, v in report["classes"].items())
        lines.append(f"    anomaly index per class: {idx}")
    if "stages" in report:
        st = report["stages"]
        stage1 = {k: {int(c): v[k] for c, v in st["stage1"].items() if k in v}
                  for k in ("transfer_score", "whole_image_gap")}
        lines.append(f"    staged scan: stage 1 screened {st['classes']} classes "
                     f"({st['stage1_settings']['n_seeds']} seeds x {st['stage1_settings']['steps']} steps); "
                     f"stage 2 ran the full detector on {len(st['promoted'])}: {', '.join(map(str, st['promoted']))}")
        lines.append(f"    stage 1 highest patch share: {staged.top_line(stage1['transfer_score'])}")
        if stage1["whole_image_gap"]:
            lines.append(f"    stage 1 highest whole-image gap: {staged.top_line(stage1['whole_image_gap'])}")
        if st.get("blend_probe", "off") != "off":
            lines.append("    blend probe: not run (a staged scan skips it; --scan full runs it)")
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


def run_detect(*, config, bad_model=None, bad_model_weights=None, data=None, data_dir=None, scale="raw",
               method="aegis", classes=None, out_dir=os.path.join("out", "detect"), seed=0, batch_size=256,
               quiet=True, plots=False, n_jobs=1, echo=print, resume=False):
    """Scan the named model (or the embedded robust pair). Returns ``{name: result}``.

    Every input is loaded and checked before any work. Each model's folder
    (``out_dir``, or ``out_dir/NAME`` for several) gets ``detect.json`` and
    ``report.html``; ``echo`` receives the verdict line and the details.
    """
    from aegis_tf.core.settings import pixel_max_of
    from aegis_tf.core.data import check_fits_model, load_split
    from aegis_tf.core.embedded import PATHS
    from aegis_tf.report.html import write_detect_html
    from aegis_tf.core.models import load_model
    from aegis_tf.core.utils import write_json

    if not (n_jobs == -1 or n_jobs >= 1):
        raise AegisError(f"--jobs must be a positive integer or -1. Received: {n_jobs}")
    data = data or PATHS["train"]
    x_data, y = load_split(data, split="train", data_dir=data_dir, scale=scale)
    loaded = []
    for name, path, weights in _targets(bad_model, bad_model_weights):
        model = load_model(path, weights)
        x = check_fits_model(x_data, y, model, f"--data {data}")
        examined = parse_classes(classes, int(model.output_shape[-1]))
        missing = [c for c in examined if not (y == c).any()]
        if missing and method != "neural-cleanse":
            raise AegisError(f"--data {data} has no images of class(es) {', '.join(map(str, missing[:10]))}; "
                             "AEGIS needs training images of every examined class (use --classes)")
        loaded.append((name, (path, weights), model, x, examined))
    pm = pixel_max_of(scale)
    results = {}
    for name, (path, weights), model, x, examined in loaded:
        folder = os.path.join(out_dir, name) if len(loaded) > 1 else out_dir
        result = {"model": path or weights, "model_file": path, "weights_file": weights, "data": data, "scale": scale}
        evidence = {}
        if method in ("aegis", "both"):
            result["aegis"] = run_aegis(model, x, y, classes=examined, config=config, pixel_max=pm, out_dir=folder,
                                        seed=seed, batch_size=batch_size, quiet=quiet, plots=plots, n_jobs=n_jobs,
                                        resume=resume)
            evidence.update(aegis_evidence(result["aegis"]))
        if method in ("neural-cleanse", "both"):
            result["neural_cleanse"] = run_neural_cleanse(model, x, classes=examined, pixel_max=pm, out_dir=folder,
                                                          seed=seed, quiet=quiet)
            evidence["neural_cleanse"] = result["neural_cleanse"]["evidence"]
        result = {"verdict": combine(evidence), **result}
        # The recovered triggers of the verdict's classes, for `aegis repair --trigger-from`.
        result["triggers"] = [n for key in ("aegis", "neural_cleanse") if key in result
                              for n in result[key]["files"].get("triggers", [])
                              if trigger_class(n) in result["verdict"]["target_classes"]]
        echo(f"{name}: {result['verdict']['line']}")
        for key in ("aegis", "neural_cleanse"):
            if key in result:
                echo(format_summary(result[key], name))
        write_json(os.path.join(folder, "detect.json"), result)
        write_detect_html(result, os.path.join(folder, "report.html"), title=f"aegis detect: {name}")
        results[name] = result
    return results
