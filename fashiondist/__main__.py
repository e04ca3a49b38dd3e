"""`python -m fashiondist ...` and `accelerate launch -m fashiondist ...` reach the same CLI as `fashiondist ...`."""

import sys

from fashiondist.cli import main

if __name__ == "__main__":
    sys.exit(main())
