import sys

from srn.cli import main

sys.exit(main())
