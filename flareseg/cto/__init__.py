"""Context-aware tumor objects (CTOs): extraction, the stored pool, CutMix and QC pictures.

- :mod:`flareseg.cto.extract`  components -> margins -> crops + index records (pure numpy)
- :mod:`flareseg.cto.pool`     ``build_pool`` (stage-3) and ``load_pool`` -> lazy ``CTOPool``
- :mod:`flareseg.cto.cutmix`   ``sample_params`` / ``apply`` / ``label_type_after`` (stage-5 loader)
- :mod:`flareseg.cto.gallery`  QC PNGs
"""
