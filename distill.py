#!/usr/bin/env python3
"""Dataset distillation: ``python distill.py --help`` (the same as the ``timm-dd-distill`` command)."""
import sys

from timm_dd.cli.distill import main

if __name__ == '__main__':
    sys.exit(main())
