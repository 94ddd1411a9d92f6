"""The Noise2Atom trainer (torch): ``livedenoise train`` runs :func:`trainer.run.train`.

Modules follow the paper's parts: :mod:`~trainer.domains` (clean domain C simulated on the fly,
noisy domain S from the user's frames), :mod:`~trainer.networks` (Ms2c, Mc2s, Ms2b, D),
:mod:`~trainer.losses` (the objective), :mod:`~trainer.presets` (paper, lite, tiny, rt, temporal),
:mod:`~trainer.loop` (schedule, checkpoints, failure case 1), :mod:`~trainer.export` (ONNX and
model card) and :mod:`~trainer.report` (loss curves and preview figures).

Never imported by the daemon: ``serve`` needs only the ONNX file.
"""
