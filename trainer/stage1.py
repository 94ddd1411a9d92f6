"""Stage 1 of ``livedenoise train``: Noise2Atom itself, ``preset.teachers`` runs of
:class:`~trainer.loop.Trainer` one after another in this process, or all at once as Dask tasks
(``--parallel``/``--scheduler``), left as the sequential runs leave them (one checkpoint)."""

from __future__ import annotations

import sys
from pathlib import Path

from livedenoise.errors import LivedenoiseError


def run_stage1(cfg, preset, inputs, norm, idx, seed, steps, device, ckpt, paths, log) -> list[dict]:
    """Noise2Atom itself, ``preset.teachers`` times (seeds :func:`~trainer.loop.teacher_seed`).
    Every checkpoint carries the runs already finished, so ``--resume`` continues the run in
    progress (or the last one, to a larger ``--steps``) and then the ones after it. A run still
    inverted after its re-initialisations is kept out of stage 2 (logged); the caller fails only
    if no run is upright. Returns each run's :meth:`~trainer.loop.Trainer.finished` record and
    ``upright``."""
    from .loop import Trainer, teacher_seed

    if (cfg.parallel or cfg.scheduler) and preset.teachers > 1:
        if ckpt is None:
            return _stage1_parallel(cfg, preset, inputs, norm, idx, seed, steps, device, paths, log)
        log("--resume: the stage-1 runs left continue one after another")
    # The checkpoint holds the state of one run (finished or not): it is restored and run to
    # ``steps`` (a larger --steps continues it), the runs before it are taken as they are.
    in_ckpt = ckpt.get("teacher", 0) if ckpt is not None else None
    runs: list[dict] = list(ckpt.get("teachers", []))[:in_ckpt] if ckpt is not None else []
    for index in range(len(runs), max(preset.teachers, len(runs) + (ckpt is not None))):
        run_seed = teacher_seed(seed, index)
        if preset.teachers > 1:
            log(f"stage 1, run {index + 1} of {preset.teachers}: seed {run_seed}")
        trainer = Trainer(preset, inputs, norm, seed=run_seed, device=device, frame_indices=idx,
                          check_every=cfg.check_every, log=log)
        trainer.extra = {"base_seed": seed, "teacher": index, "teachers": runs}
        if in_ckpt == index:
            trainer.restore(ckpt)
        trainer.run(steps, checkpoint_path=paths["checkpoint"], checkpoint_every=cfg.checkpoint_every, progress=cfg.progress)
        runs.append(trainer.finished(index))
        trainer.save(paths["checkpoint"])  # with this run among the finished ones
    return _mark_upright(runs[: preset.teachers], preset, log)


def _mark_upright(runs: list[dict], preset, log) -> list[dict]:
    for r in runs:
        pol = r["state"]["polarity"]
        r["upright"] = pol is None or pol >= 0
        if not r["upright"] and preset.teachers > 1:
            log(f"stage-1 run {r['index'] + 1} still inverted (polarity {pol:+.3f}) after "
                f"{r['state']['reinits']} re-initialisations: left out of stage 2")
    return runs


def run_checkpoint(path: Path, index: int) -> Path:
    """Where parallel stage-1 run ``index`` keeps its own checkpoint (next to the training's)."""
    return path.with_name(f"{path.stem}.run{index + 1}{path.suffix}")


def _stage1_parallel(cfg, preset, inputs, norm, idx, seed, steps, device, paths, log) -> list[dict]:
    """The stage-1 runs as Dask tasks, all at once where there are workers (one per core, or one
    per GPU), each with ``threads`` torch threads; then read back from the checkpoint each run
    wrote (:func:`run_checkpoint`, tensors only) and left as the sequential runs leave them: one
    checkpoint holding the last run and the others finished. A run's weights equal the
    sequential run's made with the same torch threads (torch's CPU kernels sum in another order
    with another thread count: docs/distributed.md)."""

    from livedenoise.cluster import ClusterSpec, connect, usable_cores, visible_gpus, worker_count, worker_threads

    from .checkpoint import load_checkpoint, save_checkpoint
    from .loop import teacher_seed

    n = preset.teachers
    gpus = visible_gpus() if device == "cuda" else []
    workers = cfg.workers or (min(n, len(gpus)) if gpus else min(n, usable_cores()))
    pinned = tuple(gpus[:workers]) if len(gpus) >= workers else ()
    files = [run_checkpoint(paths["checkpoint"], i) for i in range(n)]
    with connect(ClusterSpec(scheduler=cfg.scheduler, workers=workers, gpus=pinned)) as client:
        threads = cfg.threads or worker_threads(client)
        log(f"stage 1: {n} runs as Dask tasks on {worker_count(client)} worker(s)"
            + (f" ({len(pinned)} GPUs, one each)" if pinned else "") + f", {threads} torch thread(s) per run")
        shared = client.scatter(inputs, broadcast=False, hash=False)  # sent once per worker, not once per run
        futures = {
            client.submit(
                stage1_run, preset, shared, norm, idx, seed, teacher_seed(seed, i), i, steps, device, str(files[i]),
                cfg.check_every, cfg.checkpoint_every, threads, pure=False,
            ): i
            for i in range(n)
        }
        from distributed import as_completed

        for fut in as_completed(futures, loop=client.loop):
            try:
                done = fut.result()
            except LivedenoiseError:
                raise
            except Exception as exc:  # noqa: BLE001 - a run that failed on its worker: the training stops, in one line
                from livedenoise.errors import short_error

                raise LivedenoiseError(f"stage-1 run {futures[fut] + 1} failed on its worker: {short_error(exc)}") from None
            log(f"stage 1, run {done['index'] + 1} of {n} (seed {done['seed']}) done: {done['steps']} steps in "
                f"{done['seconds'] / 60:.1f} min, polarity {done['polarity']:+.3f}")
    runs, last = [], None
    for f in files:
        last = load_checkpoint(f)
        runs += last["teachers"]  # the run as Trainer.finished gives it (stage1_run)
    assert last is not None
    last.update(base_seed=seed, teacher=n - 1, teachers=list(runs))  # what the sequential runs leave
    save_checkpoint(last, paths["checkpoint"])
    for f in files:
        f.unlink(missing_ok=True)
    return _mark_upright(runs, preset, log)


def stage1_run(preset, inputs, norm, idx, base_seed, seed, index, steps, device, checkpoint, check_every,
               checkpoint_every, threads) -> dict:
    """One stage-1 run on a Dask worker: the sequential path's run, with ``threads`` torch threads,
    its checkpoints in ``checkpoint``. Returns a few numbers (the weights travel through the file)."""
    import torch

    from .loop import Trainer

    torch.set_num_threads(max(1, int(threads)))

    def log(message: str) -> None:
        print(f"stage-1 run {index + 1}: {message}", file=sys.stderr, flush=True)

    trainer = Trainer(preset, inputs, norm, seed=seed, device=device, frame_indices=idx, check_every=check_every, log=log)
    trainer.extra = {"base_seed": base_seed, "teacher": index, "teachers": []}
    trainer.run(steps, checkpoint_path=Path(checkpoint), checkpoint_every=checkpoint_every, progress=False)
    trainer.extra["teachers"] = [trainer.finished(index)]  # read back by the parent (_stage1_parallel)
    trainer.save(Path(checkpoint))
    state = trainer.state
    return {"index": index, "seed": seed, "steps": state.step, "seconds": state.elapsed_s, "polarity": state.polarity or 0.0}
