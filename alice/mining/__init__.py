"""View-pair mining for Alice: ``sam`` (anatomy-matched across patients), ``random_cross``, ``same_volume``."""
