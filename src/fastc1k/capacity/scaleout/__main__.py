"""`python -m fastc1k.capacity.scaleout` = `python -m fastc1k.capacity scaleout`."""
import sys

from .cli import main

sys.exit(main())
