"""Downstream segmentation: fine-tuning an Alice backbone (or one from scratch) on labelled CT and scoring it.

``labels`` (label sets: which structures, how a label map becomes classes), ``network`` (backbone + class head,
initialisation from Alice), ``train`` (the fine-tuning run), ``metrics`` (Dice, HD95), ``predict`` (label maps on
the source grid, MONAI bundle), ``evaluate`` (held-out scores, scratch vs Alice vs ablations over seeds).
"""
