"""Reading movies from files: :func:`read_movie` is the one reader every command uses."""

from ._movie import read_movie, to_wire_dtype

__all__ = ["read_movie", "to_wire_dtype"]
