"""Networks of Alice pretraining (Jiang et al., ICCV 2023): backbones (``nnformer``, ``swin``) with one output
contract (``tokens``), the projection head (``heads``), the CAFA alignment block (``cafa``), and ``build`` with
``ModelConfig``, ``PRESETS`` and ``build_backbone`` / ``build_head`` / ``build_cafa``."""
