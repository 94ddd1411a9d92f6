"""livedenoise: live Noise2Atom denoising of STEM frame streams.

The subpackages follow a frame through the lab (the README draws the tree): ``protocol`` (the
wire format) -> ``daemon`` (receive, queue, publish; ``recording`` and atom finding hang off the
publisher) around ``engine`` (the onnxruntime session and the model card); ``analysis`` (atoms,
CSS, scoring), ``io`` (reading movies), ``sim`` (detector simulators, simulated movies),
``viewer`` (the only Qt code), ``cli``, and ``testing`` (a pytest plugin). The daemon side needs
numpy, pyzmq, msgpack and onnxruntime only; torch lives in the top-level ``trainer`` package.
"""

__version__ = "0.1.0"
