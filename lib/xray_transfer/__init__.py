"""Reproduce Apostolopoulos & Mpesiana (2020), COVID-19 detection from chest X-rays by transfer learning.

Modules: ``preprocess`` (letterboxing), ``data`` (dataset assembly and caches),
``models`` (Table 1 as data, model builder), ``train`` (cross-validation, fast
path), ``metrics`` (Tables 2 and 3), ``provenance`` (run records), ``predict``
(apply a trained model to a folder of X-rays).
"""
__version__ = "0.1.0"

from . import provenance  # noqa: F401,E402  (records the commit of the code this process loads)
