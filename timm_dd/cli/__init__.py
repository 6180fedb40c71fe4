"""The command lines ``timm-dd-train`` / ``train.py`` and ``timm-dd-distill`` / ``distill.py``: the only layer that
parses arguments and prints. Their shared convention is in :mod:`timm_dd.cli.common`."""
