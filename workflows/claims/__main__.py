import sys

from .scorecard import main

sys.exit(main())
