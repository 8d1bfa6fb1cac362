"""The `cbr` command line: one module per resource, as in borg's archiver.

`main` builds the parser from each module's `register`, and every module
keeps its request building in `build_*_request(args)` functions so that what
a command sends can be checked without a controller.
"""
