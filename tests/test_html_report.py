"""The self-contained HTML pages for detect and repair reports."""

import base64
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aegis_tf.report.html import write_detect_html, write_repair_html  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Collects element text by id, table rows (cells with their classes), images and scripts."""

    def __init__(self, text):
        super().__init__()
        self.ids, self.tables, self.images, self.scripts = {}, {}, [], 0
        self._open_ids, self._table, self._row, self._cell = [], None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if "id" in a:
            self.ids[a["id"]] = ""
            self._open_ids.append((tag, a["id"]))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "class": (a.get("class") or "").split(), "text": ""}
            self._row.append(self._cell)
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag):
        if self._open_ids and self._open_ids[-1][0] == tag:
            self._open_ids.pop()
        if tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        for _, i in self._open_ids:
            self.ids[i] += data
        if self._cell is not None:
            self._cell["text"] += data


def _png(path, seed=0):
    plt.imsave(path, np.random.default_rng(seed).random((6, 6, 3)))
    return str(path)


def _evidence(scores, threshold, direction="above"):
    flagged = [int(c) for c, s in scores.items() if (s > threshold if direction == "above" else s < threshold)]
    return {"description": "test signal", "scores": scores, "threshold": threshold, "direction": direction,
            "flagged": flagged}


def _detect_result(tmp_path, backdoored=True, model="models/bd_net.keras"):
    n = 5
    share = {str(c): (0.35 if backdoored and c == 3 else 0.0) for c in range(n)}
    z = {str(c): (4.1 if backdoored and c in (3, 1) else 0.5) for c in range(n)}
    norm = {str(c): (-2.5 if backdoored and c == 3 else 0.2) for c in range(n)}
    evidence = {"patch_transfer": _evidence(share, 0.02), "whole_image": _evidence(z, 3.0),
                "neural_cleanse": _evidence(norm, -2.0, "below")}
    targets = [3] if backdoored else []
    return {
        "model": model,
        "verdict": {"backdoored": backdoored, "target_classes": targets, "evidence": evidence,
                    "line": "BACKDOORED: class 3 (patch share 0.35)" if backdoored else "CLEAN"},
        "aegis": {"verdict": "backdoored" if backdoored else "clean", "suspect_classes": targets,
                  "classes": {str(c): {} for c in range(n)},
                  "files": {"embeddings": _png(tmp_path / "emb.png", 1),
                            "suspect_patches": {"3": _png(tmp_path / "patches3.png", 2)} if backdoored else {},
                            "suspect_clusters": {"3": str(tmp_path / "missing_clusters.png")} if backdoored else {}},
                  "seconds": {"translate": 1.5}, "config": {"top_fraction": 0.02}},
        "neural_cleanse": {"verdict": "clean", "suspect_classes": [], "classes": {},
                           "files": {"masks": _png(tmp_path / "masks.png", 3)}, "seconds": {"optimize": 2.0}},
        "triggers": ["trigger_3_patch_transfer.json"] if backdoored else [],
    }


def _decoded_images(page):
    out = []
    for img in page.images:
        assert img.get("alt")
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        out.append(base64.b64decode(img["src"][len(prefix):], validate=True))
    return out


def test_detect_page_backdoored(tmp_path):
    result = _detect_result(tmp_path)
    out = tmp_path / "report" / "detect.html"
    assert write_detect_html(result, out) == out
    text = out.read_text(encoding="utf-8")
    page = Page(text)

    verdict = page.ids["verdict"]
    assert "BACKDOORED" in verdict and "3" in verdict and "patch share 0.35" in verdict
    # Verdict comes first, then the model path, then the table.
    assert text.index('id="verdict"') < text.index("models/bd_net.keras") < text.index('id="evidence"')

    header, *rows = page.tables["evidence"]
    signals = result["verdict"]["evidence"]
    assert len(rows) == 5 and [r[0]["text"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert len(header) == 1 + len(signals) and all(len(r) == 1 + len(signals) for r in rows)
    for name, ev in signals.items():
        assert any(name in h["text"] and f"{ev['threshold']:.3g}" in h["text"] for h in header)
    n_flagged = sum(len(ev["flagged"]) for ev in signals.values())
    flagged_cells = [(r[0]["text"], j) for r in rows for j, c in enumerate(r) if "flagged" in c["class"]]
    assert len(flagged_cells) == n_flagged == 4
    assert ("1", 2) in flagged_cells  # whole_image flags class 1 although the verdict does not

    images = _decoded_images(page)
    assert len(images) == 3  # patches, embeddings, masks; the missing cluster grid is skipped
    assert "trigger_3_patch_transfer.json" in text  # listed for repair --trigger-from
    assert all(b.startswith(PNG_SIGNATURE) for b in images)
    assert "missing_clusters.png" in text and "not found" in text
    assert "<details>" in text and "top_fraction" in text
    assert not list(tmp_path.joinpath("report").glob(".tmp-*"))


def test_detect_page_clean_and_escaped(tmp_path):
    result = _detect_result(tmp_path, backdoored=False, model='models/<script>alert("x")</script>.keras')
    for f in ("emb.png", "masks.png"):
        (tmp_path / f).unlink()  # every listed figure missing: notes only, no exception
    page_text = write_detect_html(result, tmp_path / "clean.html").read_text(encoding="utf-8")
    page = Page(page_text)
    assert "CLEAN" in page.ids["verdict"] and "BACKDOORED" not in page.ids["verdict"]
    assert not any("flagged" in c["class"] for r in page.tables["evidence"] for c in r)
    assert page.scripts == 0 and "&lt;script&gt;" in page_text
    assert page.images == [] and page_text.count("not found") == 2


def _repair_report(tmp_path, asr=0.97):
    def m(acc, a, rej=None):
        out = {"clean_acc": acc, "asr": a}
        if rej:
            out.update(clean_rejected=rej[0], bad_rejected=rej[1])
        return out

    test = {t: {"B": m(0.98, asr), "B_prime": m(0.95, None if asr is None else 0.1),
                "G": m(0.94, None if asr is None else 0.05, (0.03, None if asr is None else 0.9))}
            for t in ("2", "4", "10")}
    test["4_finetuned"] = test["4"]
    pruned = {t: {"channels_pruned": k, "fraction_pruned": k / 32, "channels": list(range(k)),
                  "valid_clean_acc": 0.95, "valid_asr": asr} for t, k in (("2", 10), ("4", 14), ("10", 20))}
    return {"sources": {"model": "models/bd_net.keras"}, "layer": "pool_3", "conv": "conv_3", "n_channels": 32,
            "threshold": 4, "validation": {"clean_acc": 0.98, "asr": asr}, "pruned": pruned, "test": test,
            "files": {"curve_plot": _png(tmp_path / "prune_curve.png")},
            "notes": ["ASR could not be measured: no poisoned set was given"] if asr is None else []}


@pytest.mark.parametrize("asr", [0.97, None])
def test_repair_page(tmp_path, asr):
    out = write_repair_html(_repair_report(tmp_path, asr), tmp_path / "repair.html")
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert "GoodNet" in page.ids["summary"] and "94.00%" in page.ids["summary"]
    header, *rows = page.tables["goodnet"]
    assert len(header) == 4
    labels = [r[0]["text"] for r in rows]
    assert labels[0].startswith("B (") and sum(lab.startswith("B (") for lab in labels) == 1
    assert len(rows) == 1 + 2 * 4  # B once, then B' and GoodNet per key of test
    assert sum(lab.startswith("GoodNet") for lab in labels) == 4 and any("+ft" in lab for lab in labels)
    images = _decoded_images(page)
    assert len(images) == 1 and images[0].startswith(PNG_SIGNATURE)
    if asr is None:
        assert rows[0][2]["text"] == "not measured" and "not measured" in page.ids["summary"]
        assert "no poisoned set" in text
    else:
        assert rows[0][2]["text"] == "97.00%" and "not measured" not in text


def test_repair_page_missing_threshold_and_curve(tmp_path):
    report = _repair_report(tmp_path)
    report["pruned"]["10"] = None
    del report["test"]["10"], report["test"]["4"], report["test"]["4_finetuned"]
    (tmp_path / "prune_curve.png").unlink()
    page = Page(write_repair_html(report, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert "No GoodNet" in page.ids["summary"] and page.images == []
    assert len(page.tables["goodnet"]) == 1 + 3 and "no B' saved" in page.ids["notes"]


def test_detect_page_shows_the_score_the_baseline_and_the_robustness(tmp_path):
    result = _detect_result(tmp_path)
    result["verdict"].update(score=17.5, probability=17.5 / 18.5)
    result["baselines"] = {"neural_cleanse": {"backdoored": False, "target_classes": [], "score": 0.6,
                                              "line": "CLEAN (NC index max 1.20 vs 2)"}}
    result["robustness"] = {"clean_acc": 0.98, "pgd_acc": 0.123, "eps": 0.5, "steps": 10, "n_images": 300,
                            "robust": False, "note": "not robust, like a standard-trained model: AEGIS assumes a "
                                                     "robust model; read the verdict with care", "seconds": 2.0}
    out = write_detect_html(result, tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert "Suspicion score 17.500" in page.ids["score"] and "not calibrated" in page.ids["score"]
    assert "baseline, not in the verdict" in page.ids["baseline-neural_cleanse"]
    assert "CLEAN (NC index max 1.20 vs 2)" in page.ids["baseline-neural_cleanse"]
    rob = page.ids["robustness"]
    assert "PGD accuracy 12.30% at L2 eps 0.5" in rob and "clean 98.00%" in rob and "read the verdict with care" in rob
    assert text.index('id="verdict"') < text.index('id="score"') < text.index('id="evidence"') < text.index(
        'id="robustness"')
    result["verdict"].update(score=0.9999999999999999, probability=0.49999999999999994)  # just under 1
    text = write_detect_html(result, tmp_path / "under.html").read_text(encoding="utf-8")
    assert "Suspicion score 0.999 " in text and "probability 0.499 " in text
    del result["robustness"], result["baselines"], result["verdict"]["score"]
    text = write_detect_html(result, tmp_path / "plain.html").read_text(encoding="utf-8")
    assert 'id="robustness"' not in text and 'id="score"' not in text and "baseline" not in text


def test_detect_page_names_fragile_sources_only_when_there_are_some(tmp_path):
    result = _detect_result(tmp_path, backdoored=False)
    pair = {"description": "pairs", "scores": {"4": 0.41, "7": 0.0}, "threshold": 0.25, "direction": "above",
            "flagged": [], "fragile_sources": [1]}
    result["verdict"]["evidence"]["pair_transfer"] = pair
    page = Page(write_detect_html(result, tmp_path / "f.html").read_text(encoding="utf-8"))
    assert "class(es) 1" in page.ids["fragile"] and "name no backdoor" in page.ids["fragile"]
    pair["fragile_sources"] = []
    assert "fragile" not in Page(write_detect_html(result, tmp_path / "g.html").read_text(encoding="utf-8")).ids
