"""Movies in and out: :func:`open_movie` (and :func:`read_movie` for the array alone) is the one
reader every command uses; :func:`write_imagej` writes TIFF that Fiji opens with its scale, and
:func:`write_rsciio` ``.hspy``/``.zspy``/``.emd`` (``formats`` extra). RosettaSciIO is imported
only when such a file is opened or written, so this package imports without it."""

from ._movie import Movie, open_movie, read_movie, to_wire_dtype
from ._rsciio import write_rsciio
from ._tiff import imagej_metadata, write_imagej

__all__ = ["Movie", "imagej_metadata", "open_movie", "read_movie", "to_wire_dtype", "write_imagej", "write_rsciio"]
