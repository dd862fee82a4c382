"""`python -m fastc1k.capacity.probe` = `python -m fastc1k.capacity probe`."""
import sys

from .cli import main

sys.exit(main())
