"""The benchmarks behind every performance claim in the README.

``python -m benchmarks`` runs them all (``make bench``); ``python -m benchmarks NAME ...``
runs some; ``--quick`` is a short smoke run. Each benchmark is a module here that exposes

- ``NAME``: its name, which is also the stem of its result file;
- ``run(quick: bool) -> dict``: runs it and returns JSON-able results.

A result holds the baseline and the ratios, and may hold (all optional):

- ``title``, ``summary``: a heading and a sentence for the README;
- ``goals``: a list of ``{"goal", "target", "measured", "met"}`` (see
  :func:`benchmarks._common.goal`), gathered into the README's goal table;
- ``table``: a list of flat dicts, rendered as a markdown table by ``report.py``
  when it has no specific rendering for the benchmark;
- ``notes``: sentences printed under the section.

The runner adds ``name``, ``quick``, ``elapsed_s`` and ``machine`` (CPU, cores, Python,
package versions, date), writes ``benchmarks/results/<NAME>.json``, and regenerates the
README's results section from every JSON file there (``benchmarks/report.py``).
"""
