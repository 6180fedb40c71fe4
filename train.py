#!/usr/bin/env python3
"""Train test networks on distilled data: ``python train.py --help`` (the same as the ``timm-dd-train`` command)."""
import sys

from timm_dd.cli.train import main

if __name__ == '__main__':
    sys.exit(main())
