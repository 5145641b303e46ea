"""RADIUS dictionaries of prepaid-aaa, in the FreeRADIUS v3 format read by pyrad.

The master file ``dictionary`` only includes the others: the standard
attributes of RFC 2865, 2866, 2869 and 5176, and the Cisco (vendor 9)
VoIP attributes.  Load it with ``pyrad.dictionary.Dictionary(str(path()))``.
"""

import pathlib

__all__ = ["MASTER", "path"]

#: File name of the master dictionary, which includes all the others.
MASTER = "dictionary"


def path() -> pathlib.Path:
    """Return the absolute path of the master dictionary file."""
    return pathlib.Path(__file__).resolve().parent / MASTER
