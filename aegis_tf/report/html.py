"""Self-contained HTML pages for the detect and repair reports.

:func:`write_detect_html` renders the per-model dict written as ``detect.json``;
:func:`write_repair_html` renders the dict written as ``repair.json``. Each page
is one file: PNG figures already on disk are embedded inline as base64 data
URIs, and there is no external CSS, JavaScript or font. A figure listed in the
report but missing on disk is skipped with a short note. All text is escaped.
"""

import base64
import json
import math
import numbers
import os
import urllib.parse
from html import escape

from aegis_tf.core.utils import atomic_path, to_jsonable, trigger_class

__all__ = ["write_detect_html", "write_repair_html", "write_zoo_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.banner{padding:.8em 1em;border-radius:6px;font-size:1.1em;margin:1em 0}
.banner b{font-size:1.3em}.bad{background:#fde2e1;border:2px solid #c0392b}
.good{background:#e3f6e5;border:2px solid #27ae60}.neutral{background:#f4f4f4;border:2px solid #999}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f4f4f4}td.label,th.label{text-align:left}
td.flagged{background:#f8c9c5;font-weight:bold}tr.chosen td{font-weight:bold}
tr.suspect td.label{font-weight:bold;color:#c0392b}
.na{color:#888;font-style:italic}.note{color:#8a6d3b;font-size:.9em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
code{font-size:.95em}
"""


def _image(path, alt):
    """An ``<figure>`` with the PNG at ``path`` inlined, or a note when it cannot be read."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
    except OSError:
        return f'<p class="note">{escape(alt)}: file not found ({escape(str(path))}); skipped.</p>'
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(alt)}</figcaption></figure>")


def _page(title, body):
    """The HTML skeleton around ``body`` (a list of HTML fragments)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>{escape(title)}</h1>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _write(path, html):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(html)
    return path


def _json_block(label, obj):
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, default=str)
    return f"<details><summary>{escape(label)}</summary><pre>{escape(text)}</pre></details>"


def _fmt(x, digits=3):
    if x is None:
        return '<span class="na">not measured</span>'
    if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral):
        return escape(f"{float(x):.{digits}g}")
    return escape(str(x))


def _score(x):
    """A score with 3 decimals, rounded down, so that a score just under the threshold 1 never shows as 1."""
    if x is None:
        return '<span class="na">not measured</span>'
    return escape(f"{math.floor(float(x) * 1000) / 1000:.3f}" if float(x) < 1000 else f"{float(x):.4g}")


def _pct(x):
    return '<span class="na">not measured</span>' if x is None else f"{100 * x:.2f}%"


def _class_key(c):
    return (0, int(c), "") if str(c).lstrip("-").isdigit() else (1, 0, str(c))


def write_detect_html(result, path, *, title=None):
    """Write the detect report ``result`` (the ``detect.json`` dict) as one HTML page at ``path``."""
    verdict = result.get("verdict") or {}
    evidence = verdict.get("evidence") or {}
    aegis = result.get("aegis") or {}
    nc = result.get("neural_cleanse") or {}
    triggers = {}  # class -> the recovered trigger files (aegis_tf.detect.recovered) that repair can read
    for name in result.get("triggers") or []:
        triggers.setdefault(str(trigger_class(name)), []).append(str(name))
    targets = [str(c) for c in verdict.get("target_classes") or []]
    bad = bool(verdict.get("backdoored"))
    model = str(result.get("model", "?"))
    body = []

    limits = verdict.get("limits") or []
    word = "INCONCLUSIVE" if limits else "BACKDOORED" if bad else "CLEAN"
    cls = f" &mdash; target class{'es' if len(targets) > 1 else ''} {escape(', '.join(targets))}" if targets else ""
    body.append(f'<div id="verdict" class="banner {"bad" if bad or limits else "good"}"><b>{word}</b>{cls}'
                f'<br><code>{escape(str(verdict.get("line", "")))}</code></div>')
    if limits:
        body.append('<p id="limits">No signal of this scan can be read, so no class is named: '
                    + "; ".join(escape(str(w)) for w in limits) + ".</p>")
    body.append(f'<p>Model: <code id="model">{escape(model)}</code></p>')
    named = []
    for b in verdict.get("backdoors") or []:
        if b.get("kind") == "all-to-all":
            named.append("all-to-all: " + ", ".join(f"{u}&rarr;{v}" for u, v in b["mapping"]))
        else:
            src = "every other class" if b.get("sources") == "all" else "class(es) " + ", ".join(map(str, b["sources"]))
            named.append(f"{escape(src)} &rarr; class {b['target']} ({escape(', '.join(b.get('signals') or []))})")
    if named:
        body.append('<p id="backdoors">Backdoors, source &rarr; target: ' + "; ".join(named) + ".</p>")
    fragile = (evidence.get("pair_transfer") or {}).get("fragile_sources")
    if fragile:
        body.append(f'<p id="fragile">Fragile source class(es) {escape(", ".join(map(str, fragile)))}: small patches '
                    "move their images toward many targets, so their pairs name no backdoor.</p>")
    for name, why in (verdict.get("inconclusive") or {}).items():
        body.append(f'<p id="inconclusive-{escape(str(name))}">{escape(str(name))}: inconclusive, names no class '
                    f"({escape(str(why))}).</p>")
    if verdict.get("score") is not None:
        body.append(f'<p id="score">Suspicion score {_score(verdict["score"])} (flagged at &ge; 1: the largest '
                    f"deciding signal's score over its threshold); probability {_score(verdict.get('probability'))} "
                    "(score / (1 + score), not calibrated).</p>")
    for name, base in (result.get("baselines") or {}).items():
        label = "Neural Cleanse" if name == "neural_cleanse" else name
        body.append(f'<p id="baseline-{escape(str(name))}">{escape(label)} (baseline, not in the verdict): '
                    f'<code>{escape(str(base.get("line", "")))}</code></p>')

    # Per-class evidence: one row per class, one score column per signal.
    classes = set(aegis.get("classes") or {}) | set(nc.get("classes") or {})
    for ev in evidence.values():
        classes |= {str(c) for c in (ev.get("scores") or {})}
    classes = sorted(classes, key=_class_key)
    head = ['<th class="label">class</th>']
    for name, ev in evidence.items():
        op = "&le;" if ev.get("direction") == "below" else "&ge;"
        also = ev.get("also")  # a second condition (a staged scan's stage-1 gap)
        extra = f' and {escape(str(also["name"]))} gap &ge; {_fmt(also["threshold"])}' if also else ""
        head.append(f'<th title="{escape(str(ev.get("description", "")))}">{escape(name)}<br>'
                    f'<small>flagged if {op} {_fmt(ev.get("threshold"))}{extra}</small></th>')
    rows = []
    for c in classes:
        cells = [f'<td class="label">{escape(c)}</td>']
        for ev in evidence.values():
            flagged = c in {str(f) for f in ev.get("flagged") or []}
            score = (ev.get("scores") or {}).get(c)
            attr = ' class="flagged"' if flagged else ""
            cells.append(f"<td{attr}>{'&ndash;' if score is None else _fmt(score)}</td>")
        attr = ' class="suspect"' if c in targets else ""
        rows.append(f"<tr{attr}>{''.join(cells)}</tr>")
    body.append('<h2>Evidence per class</h2>\n<table id="evidence"><thead><tr>' + "".join(head)
                + "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")
    descr = [f"<li><b>{escape(n)}</b>: {escape(str(ev.get('description', '')))}</li>"
             for n, ev in evidence.items() if ev.get("description")]
    if descr:
        body.append("<ul>" + "".join(descr) + "</ul>")
    if result.get("robustness"):
        body.append(_robustness_section(result["robustness"]))

    stages = aegis.get("stages")
    if stages:
        body.append(_stages_section(stages))

    # Figures for each suspect class.
    files = aegis.get("files") or {}
    patches, clusters = files.get("suspect_patches") or {}, files.get("suspect_clusters") or {}
    directions = files.get("suspect_whole_image") or {}
    blends = files.get("suspect_blend") or {}
    warps = files.get("suspect_warp") or {}
    masks = files.get("suspect_mask") or {}
    pair_masks = files.get("suspect_pair_mask") or {}
    suspects = list(dict.fromkeys(targets + [str(c) for c in aegis.get("suspect_classes") or []]
                                  + list(patches) + list(directions) + list(blends) + list(warps) + list(masks)
                                  + list(pair_masks)
                                  + list(triggers)
                                  + list(clusters)))
    for c in sorted(suspects, key=_class_key):
        figs = [_image(patches.get(c), f"class {c}: top patches")]
        figs.append(_image(directions.get(c), f"class {c}: recovered whole-image trigger"))
        figs.append(_image(blends.get(c), f"class {c}: recovered blend pattern"))
        figs.append(_image(warps.get(c), f"class {c}: recovered warp"))
        figs.append(_image(masks.get(c), f"class {c}: recovered mask"))
        figs.append(_image(pair_masks.get(c), f"class {c}: recovered mask per source"))
        figs.append(_image(clusters.get(c), f"class {c}: clusters"))
        if triggers.get(c):
            figs.append("<p>Recovered trigger files (for <code>aegis repair --trigger-from</code>): "
                        + ", ".join(f"<code>{escape(n)}</code>" for n in triggers[c]) + "</p>")
        if any(figs):
            body.append(f"<h2>Suspect class {escape(c)}</h2>\n" + "\n".join(f for f in figs if f))
    if files.get("embeddings"):
        body.append("<h2>Embeddings</h2>\n" + _image(files["embeddings"], "embedding plot"))
    if (nc.get("files") or {}).get("masks"):
        body.append("<h2>Neural Cleanse masks</h2>\n" + _image(nc["files"]["masks"], "Neural Cleanse masks"))

    # Timings and configuration.
    timing = [(n, s) for n, part in (("aegis", aegis), ("neural_cleanse", nc)) for s in [part.get("seconds")] if s]
    if timing or aegis.get("config"):
        body.append("<h2>Timings and configuration</h2>")
        body += [_json_block(f"{n} timings (seconds)", s) for n, s in timing]
        if aegis.get("config"):
            body.append(_json_block("aegis config", aegis["config"]))
    return _write(path, _page(title or f"Backdoor detection: {os.path.basename(model)}", body))


def _robustness_section(r):
    """How robust the model is (aegis_tf.detect.robustness): AEGIS assumes a robust model."""
    tone = "" if r.get("robust") else ' class="note"'
    return ('<h2>Robustness</h2>\n'
            f'<p id="robustness"{tone}>PGD accuracy {_pct(r.get("pgd_acc"))} at L2 eps '
            f'{_fmt(r.get("eps"))} ({escape(str(r.get("steps")))} steps; clean {_pct(r.get("clean_acc"))}, '
            f'{escape(str(r.get("n_images")))} training images): {escape(str(r.get("note", "")))}</p>\n'
            + (f'<p id="robustness-threshold" class="note">On this model the whole-image signal needs a gap of '
               f'{_fmt(r["whole_image_threshold"])}: a model that is not robust has cheap universal additive '
               'perturbations toward some class without a backdoor.</p>\n'
               if not r.get("robust") and r.get("whole_image_threshold") is not None else '')
            + '<p class="note">AEGIS assumes an adversarially robust model. The rule (robust when the PGD accuracy is '
            'at least half the clean accuracy) is a heuristic; on a model it measures as not robust the whole-image '
            'signal needs a larger gap, and nothing else changes.</p>')


def _stages_section(stages):
    """The staged scan: stage 1's settings and scores, and the classes promoted to stage 2."""
    st = stages.get("stage1_settings") or {}
    promoted = [str(c) for c in stages.get("promoted") or []]
    out = ['<h2>Staged scan</h2>',
           f'<p id="stages">Stage 1 screened {escape(str(stages.get("classes")))} classes with short translations '
           f'({escape(str(st.get("n_seeds")))} per class, {escape(str(st.get("steps")))} PGD steps). Stage 2 ran '
           f'the full detector on {len(promoted)} promoted class{"es" if len(promoted) != 1 else ""}: '
           f'{escape(", ".join(promoted)) or "none"} (the top {escape(str(st.get("top_k")))} of each signal, '
           f'and any class at patch share &ge; {_fmt(st.get("alarm_transfer"))} or whole-image or blend gap &ge; '
           f'{_fmt(st.get("alarm_gap"))}). The evidence table above is stage 2\'s.</p>']
    rows = []
    for c, v in sorted((stages.get("stage1") or {}).items(), key=lambda kv: _class_key(kv[0])):
        attr = ' class="suspect"' if v.get("promoted") else ""
        rows.append(f'<tr{attr}><td class="label">{escape(c)}</td><td>{_fmt(v.get("transfer_score"))}</td>'
                    f'<td>{_fmt(v.get("whole_image_gap"))}</td><td>{_fmt(v.get("blend_gap"))}</td>'
                    f'<td>{_fmt(v.get("flip_norm"))}</td>'
                    f'<td>{_pct(v.get("reached"))}</td><td>{"yes" if v.get("promoted") else ""}</td></tr>')
    table = ('<table id="stage1"><thead><tr><th class="label">class</th><th>patch share</th><th>whole-image gap</th>'
             '<th>blend gap</th><th>flip norm</th><th>reached</th><th>promoted</th></tr></thead><tbody>\n' + "\n".join(rows)
             + "\n</tbody></table>")
    out.append(f"<details><summary>Stage 1 scores of all {len(rows)} classes (promoted rows marked)</summary>"
               f"{table}</details>")
    return "\n".join(out)


def write_repair_html(report, path, *, title=None):
    """Write the repair report ``report`` (the ``repair.json`` dict) as one HTML page at ``path``."""
    test = report.get("test") or {}
    pruned = report.get("pruned") or {}
    t = str(report.get("threshold", ""))
    body = []

    g = (test.get(t) or {}).get("G")
    for tag in ("unlearned", "clp"):  # an unlearning-only or a CLP repair
        if not g and (test.get(tag) or {}).get("G"):
            t, g = tag, test[tag]["G"]
    if g:
        what = ("GoodNet of the unlearned B'" if t == "unlearned" else "GoodNet of the CLP-pruned B'" if t == "clp"
                else f"GoodNet at {escape(t)}% accuracy drop")
        summary = (f"{what}: clean accuracy {_pct(g.get('clean_acc'))}, "
                   f"ASR {_pct(g.get('asr'))}, sent to class N {_pct(g.get('clean_rejected'))} of clean / "
                   f"{_pct(g.get('bad_rejected'))} of poisoned inputs")
    else:
        summary = f"No GoodNet at the chosen threshold ({escape(t)}%)"
    asr = (g or {}).get("asr")
    # Green only when the backdoor is measured and gone; red while it still works; grey when unmeasured.
    tone = "neutral" if asr is None else "good" if asr <= 0.05 else "bad"
    body.append(f'<div id="summary" class="banner {tone}">{summary}</div>')
    val = report.get("validation") or {}
    trig = report.get("trigger")
    if trig:
        body.append(f"<p>Repaired from the trigger(s) <code>aegis detect</code> recovered, with clean data only "
                    f"(strategy {escape(', '.join(report.get('strategy') or []))}): "
                    f"{escape('; '.join(trig.get('found') or []))}.</p>")
    clp = report.get("clp")
    if clp:
        per_layer = ", ".join(f"{r['layer']} {len(r['pruned'])}/{r['n_channels']}" for r in clp.get("layers") or [])
        body.append(f"<p>Channel Lipschitzness-based Pruning, with no data (u = {escape(str(clp.get('u')))}): "
                    f"{escape(str(clp.get('channels_pruned')))} of {escape(str(clp.get('n_channels')))} convolution "
                    f"channels pruned ({escape(per_layer)}).</p>")
    if report.get("layer"):
        watched = (f"recovered-trigger ASR {_pct(val.get('recovered_asr'))}" if trig else f"ASR {_pct(val.get('asr'))}")
        body.append(f"<p>Pruned layer <code>{escape(str(report.get('layer')))}</code> (conv "
                    f"<code>{escape(str(report.get('conv')))}</code>, {escape(str(report.get('n_channels')))} channels); "
                    f"validation before pruning: clean {_pct(val.get('clean_acc'))}, {watched}.</p>")
    curve = (report.get("files") or {}).get("curve_plot")
    if curve:
        body.append("<h2>Pruning curve</h2>\n" + _image(curve, "clean accuracy and ASR against channels pruned"))

    rows = []
    recovered = any("recovered_asr" in (res.get("B") or {}) for res in test.values())
    floor = any((res.get("B") or {}).get("clean_to_target") is not None for res in test.values())
    for i, (tag, res) in enumerate(test.items()):
        base, ft = tag.split("_")[0], " +ft" if "finetuned" in tag else ""
        p = pruned.get(base) or {}
        ch = f" ({p['channels_pruned']} ch)" if "channels_pruned" in p else ""
        if tag == "clp":
            ch = f" ({clp['channels_pruned']} ch)" if clp else ""
        name = {"unlearned": "unlearned", "clp": "CLP"}.get(tag, f"-{base}%")
        entries = ([("B (backdoored)", res.get("B"))] if i == 0 else []) + [
            (f"B' {name}{ch}{ft}", res.get("B_prime")), (f"GoodNet {name}{ft}", res.get("G"))]
        for label, m in entries:
            m = m or {}
            rej = (f"{_pct(m.get('clean_rejected'))} / {_pct(m.get('bad_rejected'))}"
                   if "clean_rejected" in m else "&ndash;")
            mark = ' class="chosen"' if tag == t and label.startswith("GoodNet") else ""
            extra = f"<td>{_pct(m.get('recovered_asr'))}</td>" if recovered else ""
            extra += f"<td>{_pct(m.get('clean_to_target'))}</td>" if floor else ""
            rows.append(f'<tr{mark}><td class="label">{escape(label)}</td><td>{_pct(m.get("clean_acc"))}</td>'
                        f"<td>{_pct(m.get('asr'))}</td><td>{rej}</td>{extra}</tr>")
    body.append('<h2>Test set</h2>\n<table id="goodnet"><thead><tr><th class="label">model</th><th>clean accuracy</th>'
                "<th>ASR</th><th>to class N (clean / poisoned)</th>"
                + ("<th>recovered-trigger ASR</th>" if recovered else "")
                + ("<th>ASR without trigger</th>" if floor else "") + "</tr></thead><tbody>\n"
                + "\n".join(rows) + "\n</tbody></table>")
    notes = [f"threshold {k}%: accuracy never dropped that far; no B' saved" for k, p in pruned.items() if p is None]
    notes += [f"threshold {k}%: {p['channels_pruned']} channels, chosen by {p['stop_reason']}"
              for k, p in pruned.items() if p and p.get("stop_reason")]
    if report.get("asr_note"):
        notes.append(report["asr_note"])
    notes += [str(n) for n in report.get("notes") or []]
    if notes:
        body.append('<h2>Notes</h2>\n<ul id="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    if report.get("sources"):
        body.append(_json_block("sources", report["sources"]))
    return _write(path, _page(title or "Backdoor repair (pruning + GoodNet)", body))


def write_zoo_html(summary, path, *, roc_png=None, root=None, title="aegis scan-zoo"):
    """The index page of a zoo scan (``summary.json``'s dict): one row per model, linking its
    own ``report.html`` (relative to ``root``, the scan's folder), the counts, the metrics
    against the truth with the ROC curve, and the time per model."""
    c = summary["counts"]
    flagged = c["backdoored"]
    body = [f'<div class="banner {"bad" if flagged else "good" if not c["error"] else "neutral"}">'
            f'<b>{flagged}</b> of {summary["models"]} model(s) flagged as backdoored; {c["clean"]} clean, '
            f'{c["inconclusive"]} inconclusive, {c["error"]} error(s)</div>']
    rows = ['<tr><th class="label">model</th><th class="label">verdict</th><th>classes</th><th>score</th>'
            '<th class="label">truth</th><th class="label">right target</th><th>seconds</th>'
            '<th class="label">details</th></tr>']
    for r in summary["rows"]:
        name = escape(r["name"])
        page = r.get("page")
        if page and root is not None and os.path.isfile(os.path.join(root, page)):
            name = f'<a href="{escape(urllib.parse.quote(page))}">{name}</a>'
        css = ' class="flagged"' if r["verdict"] == "backdoored" else ""
        classes = ", ".join(map(str, r.get("target_classes") or [])) or "-"
        right = {None: "-", True: "yes", False: "no"}[r.get("right_target")]
        details = r["error"] if r["status"] != "done" else (r.get("line") or "")
        truth = f'{r["truth"]} ({r["family"]})' if r.get("truth") else "-"
        rows.append(f'<tr><td class="label">{name}</td><td class="label"{css}>{escape(r["verdict"])}</td>'
                    f'<td>{escape(classes)}</td><td>{_score(r.get("score"))}</td><td class="label">{escape(truth)}</td>'
                    f'<td class="label">{right}</td><td>{_fmt(r.get("seconds"), 4)}</td>'
                    f'<td class="label">{escape(details)}</td></tr>')
    body += ["<h2>Models</h2>", "<table>" + "".join(rows) + "</table>"]
    m = summary.get("metrics")
    if m:
        body.append("<h2>Against the truth</h2>")
        items = [("models scored", m["models"]), ("backdoored", m["backdoored"]), ("clean", m["clean"]),
                 ("ROC-AUC", m["roc_auc"]), ("cross-entropy (TrojAI)", m["cross_entropy"]), ("Brier score", m["brier"]),
                 ("accuracy at score >= 1", m["accuracy"]), ("TPR at 5% FPR", m["tpr_at_5pct_fpr"]),
                 ("right target (of flagged backdoored)",
                  f'{m["right_target"]["right"]} of {m["right_target"]["flagged_backdoored"]}')]
        body.append("<table>" + "".join(f'<tr><td class="label">{escape(k)}</td><td>{_fmt(v)}</td></tr>'
                                        for k, v in items) + "</table>")
        if summary.get("left_out"):
            body.append('<p class="note">Left out of the metrics: ' + escape("; ".join(
                f"{n} {why}" for why, n in summary["left_out"].items())) + ".</p>")
        body.append(_image(roc_png, "ROC curve of the suspicion score"))
        if summary.get("families"):
            fam = ['<tr><th class="label">family</th><th>models</th><th>backdoored</th><th>flagged</th>'
                   '<th>right target</th><th>mean score</th></tr>']
            fam += [f'<tr><td class="label">{escape(k)}</td><td>{f["models"]}</td><td>{f["backdoored"]}</td>'
                    f'<td>{f["flagged"]}</td><td>{f["right_target"]}</td><td>{_fmt(f["mean_score"])}</td></tr>'
                    for k, f in summary["families"].items()]
            body += ["<h3>By family</h3>", "<table>" + "".join(fam) + "</table>"]
    t = summary["seconds_per_model"]
    body.append("<h2>Time</h2>")
    body.append(f'<p>Seconds per model: mean {_fmt(t["mean"], 4)}, worst {_fmt(t["worst"], 4)} '
                f'({t["models_timed"]} scanned); wall {_fmt(summary.get("wall_seconds"), 4)} s.</p>')
    body.append(_json_block("engine", summary.get("engine")))
    return _write(path, _page(title, body))
