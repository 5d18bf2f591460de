"""Scanning a model zoo: hundreds of models, one ``result.json`` each, on this machine's
cores or a Ray cluster, scored against the truth where the zoo gives it.

* :mod:`aegis_tf.zoo.manifest`: what a zoo holds (folders with ``config.json``, or a manifest);
* :mod:`aegis_tf.zoo.worker`: one model scanned, wherever a worker runs it;
* :mod:`aegis_tf.zoo.engines`: local worker processes, or Ray;
* :mod:`aegis_tf.zoo.summary`: ``summary.json``/``.md`` and the index ``report.html``;
* :mod:`aegis_tf.zoo.scan`: the job (:func:`aegis_tf.zoo.scan.scan_zoo`).

See docs/zoo.md.
"""
