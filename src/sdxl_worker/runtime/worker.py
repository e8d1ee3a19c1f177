"""The worker a job runs on: the loaded models and the helpers its settings configure.

Start-up (sdxl_worker.runtime.startup) reads the configuration once and builds one ``Worker``;
every job gets it, and nothing a job runs reads the environment. Tests and benchmarks build one
the same way from the settings they want (``Worker.build(models, config.load({...}))``).

Lifetimes: the models and the storage client live as long as the process; the fetcher, the image
reader and the LoRA files hold only their settings (the LoRA cache is a folder on disk), so one of
each serves every job.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdxl_worker import config
from sdxl_worker.errors import MB
from sdxl_worker.inputs.fetch import Fetcher
from sdxl_worker.inputs.images import ImageReader
from sdxl_worker.inputs.lora_files import LoraFiles


@dataclass
class Worker:
    """What jobs run on: the settings, the models, the worker's own storage (None: inline), and the
    readers of a job's files."""

    settings: config.Config
    models: object  # sdxl_worker.engine.models.Models
    storage: object | None  # sdxl_worker.delivery.storage.Storage
    fetcher: Fetcher
    images: ImageReader
    lora_files: LoraFiles

    @classmethod
    def build(cls, models, settings: config.Config, storage=None) -> "Worker":
        fetcher = Fetcher(settings.fetch)
        return cls(settings, models, storage, fetcher, ImageReader(fetcher, settings.fetch.max_image_pixels),
                   LoraFiles(settings.loras, fetcher, hub_offline=settings.models.hub_offline))

    @property
    def max_job_work(self) -> float:
        """MAX_JOB_WORK: the most work one job may ask for, in units (sdxl_worker.engine.budget)."""
        return self.settings.jobs.max_job_work

    @property
    def inline_limit_bytes(self) -> int:
        """INLINE_LIMIT_MB in bytes: the room for a job's previews and final payload together."""
        return int(self.settings.jobs.inline_limit_mb * MB)
