import sys

from lalm_lens.cli import main

sys.exit(main())
