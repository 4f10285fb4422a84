"""recall: embedding serving for the first stage of a recommender.

One installed package, three layers with one-way imports (``trainer -> index <- service``):
:mod:`recall.index` (the bundle contract, FAISS search, the numpy tower), :mod:`recall.service`
(the HTTP service) and :mod:`recall.trainer` (the PyTorch trainer); :mod:`recall.cli`, the
``recall`` command, sits above all three (``make lint`` checks the rule with import-linter);
:mod:`recall.client`, the HTTP client, stands apart (httpx and numpy only).
Their sources live in the repository's top-level ``index/``, ``service/`` and ``trainer/``
folders; ``recall/index``, ``recall/service`` and ``recall/trainer`` are symlinks to them,
so the source tree imports exactly as the installed wheel does (the wheel holds real files).
"""
