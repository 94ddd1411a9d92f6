"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class LivedenoiseError(Exception):
    """A user-facing error: bad input, a missing model, a port in use.

    The message is printed as-is by the CLI (``error: <message>``), so it must say what was
    wrong and, where possible, what to do about it, in one line.
    """


class MalformedMessage(LivedenoiseError):
    """A detector message that violates the frame protocol (see docs/protocol.md)."""


class ModelError(LivedenoiseError):
    """A model file that cannot be used: unreadable, not ONNX, or without livedenoise metadata."""
