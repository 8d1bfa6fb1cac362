"""Code shared by the controller, the agent and the CLI.

Holds the generated cbr.v1 stubs (``cbr.v1``, never edited), the one error
hierarchy with CBR codes, request signing, limits and the client helpers. It
must not import ``controller`` or ``agent``: both depend on it, never the
other way round.
"""

__version__ = "0.1.0"
