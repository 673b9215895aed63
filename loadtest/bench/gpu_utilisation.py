"""GPU utilisation while a benchmark step runs, sampled from nvidia-smi twice a second."""

import shutil
import statistics
import subprocess
import threading
from types import TracebackType


class GpuUtilisation:
    """`with GpuUtilisation() as gpu: ...`, then `gpu.summary()`: mean and peak busy % per
    GPU, or a note that there is no nvidia-smi here."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval_s = interval_s
        self._samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._smi = shutil.which("nvidia-smi")

    def __enter__(self) -> "GpuUtilisation":
        if self._smi:
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        assert self._smi is not None
        command = [self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(self._interval_s):
            finished = subprocess.run(command, capture_output=True, text=True, check=False)
            if finished.returncode == 0:
                self._samples.append([float(v) for v in finished.stdout.split()])

    def summary(self) -> str:
        if not self._smi:
            return "GPU utilisation: n/a (no nvidia-smi)"
        if not self._samples:
            return "GPU utilisation: no samples"
        per_gpu = list(zip(*self._samples, strict=True))
        return "GPU utilisation: " + ", ".join(
            f"gpu{i} mean {statistics.fmean(v):.0f}% peak {max(v):.0f}%"
            for i, v in enumerate(per_gpu)
        )
