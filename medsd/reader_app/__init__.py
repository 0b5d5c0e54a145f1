"""The reader study as a local web app: ``medsd reader_study serve STUDY_DIR`` (see docs/reader_study.md).

- :mod:`.study`: the cases of a study folder written by ``medsd reader_study export``, served blinded;
- :mod:`.db`: readers, their case orders and answers in SQLite (WAL, every answer committed when given);
- :mod:`.server`: the Flask app (reader and coordinator pages, JSON answers), ``templates/`` and ``static/``.

A top-layer package: it uses ``medsd.data`` and ``medsd.metrics``, nothing below imports it.
"""
