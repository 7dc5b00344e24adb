import sys

from workflows.train.loop import main

sys.exit(main())
