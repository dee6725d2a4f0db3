import sys

from matq_compile.cli import main

sys.exit(main())
