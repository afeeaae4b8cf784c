"""Evaluation: score a checkpoint or an export on labelled faces (``evaluate``), k-fold protocols
(``crossval``), paired comparisons of two models (``compare``) and the age correction fitted on validation
(``calibrate``). The metrics and reports themselves are in :mod:`agegender.reporting`."""
