"""A queue of independent training runs shared by worker processes through one folder (for ``reproduce.py``).

Each job has its own folder under the output. A finished job writes ``job.json`` there (atomically) and is never run
again; an interrupted one resumes from its run's checkpoint the next time. Workers claim jobs in queue order with an
exclusive-create file in this invocation's claim folder, so no two processes run (or write) the same job, and a job
whose dependencies have not finished is left for later. Workers are started fresh (``spawn``: a process forked
after PyTorch's thread pool or CUDA were used can hang), each with the runner object the parent made; the runner
reads data the parent prepared once (e.g. a memory-mapped file) instead of preparing it again.
"""
import json
import logging
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from timm_dd.io import atomic_write_json

DONE_FILE = 'job.json'
FAILED_FILE = 'job_failed.json'


@dataclass(frozen=True)
class Job:
    key: str  # also its folder under the output, e.g. 'mtt-ipc10/dpkd-mtt/resnet18_dd/seed0'
    spec: Dict[str, Any] = field(hash=False, compare=False)
    needs: Tuple[str, ...] = ()  # keys of jobs that must have finished first


class Runner(Protocol):
    """Picklable: sent to every worker, which calls ``setup(worker_index)`` once and then runs jobs with the
    function it returns. ``estimate(job)``: the seconds a job is expected to take (``None``: unknown), so that
    no job is started that cannot finish before the time limit."""

    def setup(self, worker: int) -> Callable[['Job'], Dict[str, Any]]: ...

    def estimate(self, job: 'Job') -> Optional[float]: ...


def done_record(out: Path, key: str) -> Optional[Dict[str, Any]]:
    path = out / key / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _claim(out: Path, claims: Path, jobs: Sequence[Job],
           fits: Callable[[Job], bool] = lambda job: True) -> Tuple[Optional[Job], bool]:
    """The first job nobody has finished or claimed whose dependencies are done and that ``fits`` the time left;
    and whether any job is still waiting on a dependency (then the caller polls again)."""
    waiting = False
    for job in jobs:
        if (out / job.key / DONE_FILE).is_file() or not fits(job):
            continue
        claim = claims / job.key.replace('/', '__')
        if claim.exists():
            continue
        if not all((out / need / DONE_FILE).is_file() for need in job.needs):
            waiting = waiting or not any((out / need / FAILED_FILE).is_file() for need in job.needs)
            continue
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return job, waiting
    return None, waiting


def work(out: Path, claims: Path, jobs: Sequence[Job], run: Callable[[Job], Dict[str, Any]],
         poll_seconds: float = 2.0, deadline: Optional[float] = None,
         estimate: Optional[Callable[[Job], Optional[float]]] = None) -> int:
    """Run jobs from the queue until none is left for this process (none that fits before ``deadline``, a
    ``time.time()``, by ``estimate``); returns how many it finished."""
    logger = logging.getLogger('reproduce.jobs')
    finished = 0

    def fits(job: Job) -> bool:
        seconds = estimate(job) if (estimate is not None and deadline is not None) else None
        return seconds is None or time.time() + seconds <= deadline

    while True:
        job, waiting = _claim(out, claims, jobs, fits)
        if job is None:
            if not waiting:
                return finished
            time.sleep(poll_seconds)
            continue
        start = time.time()
        logger.info('start %s', job.key)
        try:
            record = run(job)
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the table; its error is recorded
            logger.error('failed %s: %s', job.key, e)
            atomic_write_json(out / job.key / FAILED_FILE, dict(key=job.key, error=repr(e),
                                                                traceback=traceback.format_exc()), indent=2)
            continue
        record = dict(record, key=job.key, seconds=time.time() - start)
        atomic_write_json(out / job.key / DONE_FILE, record, indent=2)
        (out / job.key / FAILED_FILE).unlink(missing_ok=True)  # an earlier try's error no longer holds
        finished += 1
        logger.info('done %s in %.0f s', job.key, record['seconds'])


def _worker_main(index: int, out: Path, claims: Path, jobs: Sequence[Job], runner: Runner,
                 deadline: Optional[float]) -> None:
    logs = out / 'logs'
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / f'worker{index}.log')
    handler.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s %(message)s'))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    work(out, claims, jobs, runner.setup(index), deadline=deadline, estimate=runner.estimate)


def run_queue(out: Path, jobs: Sequence[Job], runner: Runner,
              workers: int = 1, time_limit: Optional[float] = None, on_tick: Optional[Callable[[], None]] = None,
              tick_seconds: float = 30.0) -> Dict[str, Any]:
    """Run ``jobs`` in ``workers`` processes (1 without a time limit: in this process) until all are done or
    ``time_limit`` seconds have passed (workers then start no job expected to outlast the limit, and are stopped at it; their
    runs resume from checkpoints next time). ``on_tick`` is
    called every ``tick_seconds`` and at the end (the parent rewrites the table there)."""
    out.mkdir(parents=True, exist_ok=True)
    claims = out / f'.claims-{os.getpid()}-{int(time.time())}'
    claims.mkdir()
    start = time.time()
    stopped = False
    if workers <= 1 and time_limit is None:
        work(out, claims, jobs, runner.setup(0))
    else:
        ctx = multiprocessing.get_context('spawn')
        os.environ.setdefault('TQDM_DISABLE', '1')  # inherited: bars of K processes on one stream are noise
        deadline = start + time_limit if time_limit is not None else None
        procs = [ctx.Process(target=_worker_main, args=(i, out, claims, jobs, runner, deadline), daemon=True)
                 for i in range(max(1, workers))]
        for p in procs:
            p.start()
        last_tick = time.time()
        while any(p.is_alive() for p in procs):
            if time_limit is not None and time.time() - start > time_limit:
                stopped = True
                for p in procs:
                    p.terminate()
                break
            time.sleep(1.0)
            if on_tick is not None and time.time() - last_tick > tick_seconds:
                on_tick()
                last_tick = time.time()
        for p in procs:
            p.join(timeout=30)
    for claim in claims.iterdir():  # only this invocation's own claim files
        claim.unlink()
    claims.rmdir()
    if on_tick is not None:
        on_tick()
    pending = [j.key for j in jobs if done_record(out, j.key) is None]
    return dict(seconds=time.time() - start, stopped_at_time_limit=stopped, pending=pending)


def finished_records(out: Path, jobs: Sequence[Job]) -> List[Dict[str, Any]]:
    return [r for j in jobs if (r := done_record(out, j.key)) is not None]


def worker_accelerator(worker: int, cpu: bool):
    """A worker's ``Accelerator``: on a host with several GPUs, worker ``i`` uses GPU ``i mod n`` (so K workers
    spread over the GPUs; one process per run, no gradient traffic); on a GPU, cuDNN picks its kernels once for the
    fixed shapes and the process uses one CPU thread (the K workers share the host's cores)."""
    import torch
    from accelerate import Accelerator
    if not cpu and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(worker % torch.cuda.device_count())  # before the Accelerator reads the device
    accelerator = Accelerator(cpu=cpu)
    if accelerator.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.set_num_threads(1)
    return accelerator
