import sys

from flashvsr_q.cli import main

sys.exit(main())
