"""The client side of an archive job: plan the tasks, submit them, follow them to the end.

Per input file: one :func:`~._tasks.prepare` task (opens it, creates the output under a temporary
name), then one :func:`~._tasks.denoise_range` task per range of frames, then one
:func:`~._tasks.check` task once every range is written (CSS and the guard, as ``denoise`` gives
them for one file), then the rename to the final name, done here. A file whose task fails (unreadable, a
malformed frame, an output that cannot be written, a task that killed its worker three times) is
reported in one line, its other tasks cancelled and its temporary output removed; the other files
go on. A worker that dies loses nothing but time: the scheduler gives its tasks to another worker,
and a range written twice is the same bytes in the same place.

Without a Dask client the same tasks run here, one after another (no Dask needed).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LivedenoiseError, short_error
from ._outputs import FORMATS, publish, remove_output
from ._tasks import Checked, DenoiseSpec, Prepared, check, denoise_range, prepare

TASK_PIXELS = 1 << 22  # pixels per range task: 256 frames of 128², 16 of 512² (>= 0.2 s of work on a core)
MAX_TASK_FRAMES = 256  # and at most this many frames, so that a few long files still spread over the workers


def frames_per_task(shape: tuple[int, int, int], max_batch: int, pixels: int = TASK_PIXELS) -> int:
    """Frames per range task: about ``pixels`` pixels, a multiple of ``max_batch`` (at least one batch).

    >>> frames_per_task((1000, 128, 128), 8), frames_per_task((50, 512, 512), 8), frames_per_task((9, 2048, 2048), 8)
    (256, 16, 8)
    """
    per_frame = max(1, shape[1] * shape[2])
    n = min(MAX_TASK_FRAMES, max(1, pixels // per_frame))
    return max(max_batch, n - n % max_batch)


def plan_ranges(frames: int, step: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``step`` frames covering ``frames`` (the last one shorter).

    >>> plan_ranges(20, 8)
    [(0, 8), (8, 16), (16, 20)]
    """
    return [(a, min(a + step, frames)) for a in range(0, frames, step)]


def output_paths(sources: Sequence[Path], outdir: Path, fmt: str) -> list[Path]:
    """``OUTDIR/<input stem>.tif`` (or ``.zarr``) per input; two inputs with one name are refused."""
    if fmt not in FORMATS:
        raise LivedenoiseError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    outs = [outdir / f"{Path(s).stem}.{fmt}" for s in sources]
    seen: dict[Path, Path] = {}
    inputs = {Path(s).resolve() for s in sources}
    for s, o in zip(sources, outs):
        if o.resolve() in inputs:
            raise LivedenoiseError(f"{o} would replace an input: give another output folder")
        if o in seen:
            raise LivedenoiseError(f"{seen[o]} and {s} would both be written to {o}: rename one, or denoise them in two runs")
        seen[o] = Path(s)
    return outs


@dataclass
class FileResult:
    """One input's outcome: its output, or the one line that says why not."""

    source: Path
    output: Path
    frames: int = 0
    prepared: Prepared | None = None
    checked: Checked | None = None  # CSS and the guard's verdict on the finished output
    error: str | None = None
    ranges_left: int = -1  # -1: not prepared yet
    tmp: Path | None = None
    done: bool = False


@dataclass
class JobReport:
    """What a job did: per file, and the figures ``benchmarks/archive.py`` prints."""

    files: list[FileResult]
    wall_s: float = 0.0
    work_s: float = 0.0  # seconds spent inside tasks, all workers together
    tasks: int = 0
    workers: int = 1
    events: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.error is not None]

    @property
    def frames(self) -> int:
        return sum(f.frames for f in self.files if f.done)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def overhead(self) -> float:
        """Share of the workers' time not spent inside tasks (scheduling, transfers, idle at the end)."""
        total = self.wall_s * self.workers
        return max(0.0, 1.0 - self.work_s / total) if total > 0 else 0.0


class _Done:
    """A task run here, now: the result of ``fn(*args)`` or its exception (the no-Dask path)."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.exc: BaseException | None = None
        try:
            self.value = fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported per file, like a remote task's failure
            self.exc = exc

    def result(self) -> Any:
        if self.exc is not None:
            raise self.exc
        return self.value

    def cancel(self) -> None:
        pass


class _Inline:
    """Runs each task when the job asks for its result, in submission order."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Any, Callable[..., Any], tuple]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = 0) -> Any:
        token = object()
        self._queue.append((token, fn, args))
        return token

    def completed(self) -> Iterator[tuple[Any, _Done]]:
        while self._queue:
            token, fn, args = self._queue.popleft()
            yield token, _Done(fn, args)

    def cancel(self, tokens: Iterable[Any]) -> None:
        drop = set(map(id, tokens))
        self._queue = deque(q for q in self._queue if id(q[0]) not in drop)


class _OnDask:
    def __init__(self, client: Any) -> None:
        import distributed

        self.client = client
        self._done = distributed.as_completed(loop=client.loop)

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = 0) -> Any:
        fut = self.client.submit(fn, *args, pure=False, priority=priority)
        self._done.add(fut)
        return fut

    def completed(self) -> Iterator[tuple[Any, Any]]:
        for fut in self._done:
            yield fut, fut

    def cancel(self, futures: Iterable[Any]) -> None:
        futures = list(futures)
        if futures:
            self.client.cancel(futures)


def _message(exc: BaseException, source: Path) -> str:
    """One line for a failed task, naming the file."""
    name = type(exc).__name__
    if name == "KilledWorker":
        text = "its task killed a worker process each time it ran (out of memory?)"
    elif isinstance(exc, LivedenoiseError):
        text = " ".join(str(exc).split())
    else:
        text = f"{name}: {short_error(exc)}"
    return text if str(source) in text else f"{source}: {text}"


def denoise_files(
    sources: Sequence[Path],
    outputs: Sequence[Path],
    spec: DenoiseSpec,
    *,
    client: Any = None,
    task_pixels: int = TASK_PIXELS,
    on_file: Callable[[FileResult], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> JobReport:
    """Denoise each of ``sources`` into ``outputs[i]`` on ``client`` (a ``distributed.Client``;
    None: here, one task after another). ``on_file`` is called once per file, done or failed;
    ``on_progress(frames done, frames known)`` after each task. Never raises for one file's
    failure: see :attr:`JobReport.failed`."""
    t0 = time.perf_counter()
    runner: Any = _OnDask(client) if client is not None else _Inline()
    workers = 1
    if client is not None:
        from ..cluster import worker_count

        workers = worker_count(client)
    token = uuid.uuid4().hex[:8]
    files = [FileResult(Path(s), Path(o)) for s, o in zip(sources, outputs)]
    report = JobReport(files, workers=workers)
    # tasks not finished yet: id -> (task, kind, file). A finished task is forgotten at once, so
    # Dask drops its result and never recomputes it (a prepare run again would empty the output).
    pending: dict[int, tuple[Any, str, int]] = {}
    frames_known = frames_done = 0

    def submit(i: int, kind: str, fn: Callable[..., Any], *args: Any, priority: int = 0) -> None:
        t = runner.submit(fn, *args, priority=priority)
        pending[id(t)] = (t, kind, i)

    def cancel(i: int) -> None:
        mine = [k for k, (_, _, j) in pending.items() if j == i]
        runner.cancel([pending.pop(k)[0] for k in mine])

    def fail(i: int, message: str) -> None:
        f = files[i]
        if f.error is not None or f.done:
            return
        f.error = message
        cancel(i)
        if f.tmp is not None:
            remove_output(str(f.tmp))
        if on_file:
            on_file(f)

    for i, f in enumerate(files):
        f.tmp = f.output.with_name(f".{f.output.name}.{token}.partial.{spec.format}")
        submit(i, "prepare", prepare, spec, str(f.source), str(f.tmp), priority=10)
    try:
        for task, done in runner.completed():
            entry = pending.pop(id(task), None)
            del task
            if entry is None:
                continue  # a cancelled task of a failed file
            _, kind, i = entry
            f = files[i]
            try:
                value = done.result()
            except Exception as exc:  # noqa: BLE001 - whatever the task raised: this file fails, the rest go on
                if type(exc).__name__ == "CancelledError":
                    continue
                fail(i, _message(exc, f.source))
                continue
            finally:
                report.tasks += 1
            if kind == "prepare":
                prep: Prepared = value
                f.prepared = prep
                report.work_s += prep.work_s
                frames_known += prep.frames
                ranges = plan_ranges(prep.frames, frames_per_task(prep.shape, spec.max_batch, task_pixels))
                f.ranges_left = len(ranges)
                for a, b in ranges:
                    submit(i, "range", denoise_range, spec, str(f.source), str(f.tmp), a, b)
            elif kind == "range":
                n, seconds = value
                report.work_s += seconds
                frames_done += n
                f.frames += n
                f.ranges_left -= 1
                if f.ranges_left == 0:
                    assert f.prepared is not None
                    submit(i, "check", check, spec, str(f.source), str(f.tmp), f.frames, f.prepared.pixel_size_nm, priority=5)
            else:
                f.checked = value
                report.work_s += value.work_s
                try:
                    publish(str(f.tmp), str(f.output))
                except OSError as exc:
                    fail(i, f"cannot write {f.output}: {exc.strerror or exc}")
                    continue
                f.done = True
                if on_file:
                    on_file(f)
            if on_progress:
                on_progress(frames_done, frames_known)
    finally:
        for i, f in enumerate(files):
            if not f.done and f.tmp is not None:
                if f.error is None:
                    f.error = f"{f.source}: not finished (interrupted)"
                cancel(i)
                remove_output(str(f.tmp))
        report.wall_s = time.perf_counter() - t0
    return report
