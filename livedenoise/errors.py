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


class PipelineError(LivedenoiseError):
    """A pipeline thread of ``serve`` failed (an exception escaped its loop), so the daemon stopped.

    Raised by :meth:`livedenoise.daemon.Daemon.run` after the clean stop, so that ``serve`` exits
    non-zero with one line, ``error: <stage> thread failed: <exception>``, which a supervisor sees.
    ``stage`` names the thread; ``__cause__`` is its exception (None if it merely ended).
    """

    def __init__(self, stage: str, error: BaseException | None = None):
        self.stage = stage
        if error is None:
            super().__init__(f"{stage} thread ended unexpectedly")
            return
        text = " ".join(str(error).split())  # one line, whatever the exception says
        super().__init__(f"{stage} thread failed: {type(error).__name__}" + (f": {text}" if text else ""))
        self.__cause__ = error


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message, at most 300 characters (onnxruntime's run long)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
