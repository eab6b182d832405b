import sys

from leo.cli import main

sys.exit(main())
