"""Alice pretraining (Jiang et al., ICCV 2023): ``config`` (dataclasses, presets, YAML, overrides), ``views``
(online mined pairs, crops), ``masking``, ``losses`` (modules owning their centres), ``ssl_model`` (student, EMA
teacher, ``compute_losses``), ``schedules`` (arrays by step), ``train`` (one loop, single process or torchrun)
and ``export`` (the backbone as a MONAI bundle)."""
