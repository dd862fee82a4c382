"""`python -m fastc1k` is `python -m fastc1k.serve`."""
import sys

from .serve import main

sys.exit(main())
