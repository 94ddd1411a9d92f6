"""livedenoise: live Noise2Atom denoising of STEM frame streams.

The daemon side (protocol, source, batcher, engine, sink, metrics) needs numpy, pyzmq, msgpack
and onnxruntime only; torch lives in ``trainer`` and Qt in ``livedenoise.viewer``.
"""

__version__ = "0.1.0"
