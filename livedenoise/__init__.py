"""livedenoise: live denoising of STEM frame streams.

In Python (README, "Python"): :func:`denoise`, :func:`load_model`, :func:`open_movie`,
:func:`score`, :func:`find_atoms`, :func:`simulate`; loaded on first use, so ``import
livedenoise.daemon`` still loads no more than the daemon needs.

The subpackages follow a frame through the lab (the README draws the tree): ``protocol`` (the
wire format) -> ``daemon`` (receive, queue, publish; ``recording`` and atom finding hang off the
publisher) around ``engine`` (the onnxruntime session and the model card); ``analysis`` (atoms,
CSS, scoring), ``io`` (reading movies), ``sim`` (detector simulators, simulated movies),
``viewer`` (the only Qt code), ``cli``, and ``testing`` (a pytest plugin). The daemon side needs
numpy, pyzmq, msgpack and onnxruntime only; torch lives in the top-level ``trainer`` package.
"""

__version__ = "0.1.0"

#: name -> (module, attribute), imported on first use (PEP 562)
_API = {
    "denoise": ("._api", "denoise"),
    "load_model": ("._api", "load_model"),
    "simulate": ("._api", "simulate"),
    "open_movie": (".io", "open_movie"),
    "score": (".analysis", "score"),
    "find_atoms": (".analysis", "find_atoms"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'livedenoise' has no attribute {name!r}")
    import importlib

    module, attr = _API[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value
