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
from sdxl_worker.engine import control_pipelines, preset_weights, switch
from sdxl_worker.errors import MB
from sdxl_worker.inputs.fetch import Fetcher
from sdxl_worker.inputs.images import ImageReader
from sdxl_worker.inputs.lora_files import LoraFiles
from sdxl_worker.request.types import Request
from sdxl_worker.runtime.checks import Abilities


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

    def abilities(self, request: Request, has_storage: bool) -> Abilities:
        """What this worker can do for ``request`` (the check pass's side of it), as of now: a
        checkpoint that failed to load, or preset weights put on a network volume, change it."""
        models = self.models
        return Abilities(
            has_refiner=models.has_refiner,
            has_storage=has_storage,
            model_names=switch.model_names(models),
            broken_models=tuple(models.broken),
            presets=preset_weights.available(models.settings) if request.preset else (),
            controlnets=tuple(models.controlnets),
            union_controlnets=tuple(control_pipelines.union_modes(models.controlnets).items()),
            has_depth=getattr(models, "depth", None) is not None,
            has_pose=getattr(models, "pose", None) is not None,
            has_upscaler=getattr(models, "upscaler", None) is not None,
            upscaler_flops=models.upscaler.flops_per_pixel if getattr(models, "upscaler", None) else 0,
            has_ip_adapter=models.ip_adapter is not None,
            cpu_offload=bool(models.settings is not None and models.settings.cpu_offload),
            broken_samplers=tuple(models.broken_samplers),
            max_job_work=self.max_job_work,
            switch_work=switch.switch_work(models, request.model),
            prompt_tokenizer=getattr(models.base, "tokenizer_2", None),
            lora_files=self.lora_files,
            scheduler_configs=None if request.scheduler in models.broken_samplers else _configs_for(models, request.model),
        )

    @property
    def max_job_work(self) -> float:
        """MAX_JOB_WORK: the most work one job may ask for, in units (sdxl_worker.engine.work)."""
        return self.settings.jobs.max_job_work

    @property
    def inline_limit_bytes(self) -> int:
        """INLINE_LIMIT_MB in bytes: the room for a job's previews and final payload together."""
        return int(self.settings.jobs.inline_limit_mb * MB)


def _configs_for(models, name: str | None) -> dict:
    """The scheduler configs a job naming checkpoint ``name`` runs with: its own when it is loaded
    (in use or kept), else those in use (a checkpoint still to load brings its own: the run
    stage counts again after loading it)."""
    configs = dict(models.scheduler_configs)
    if name is not None and name != models.name and name in models.kept:
        configs["base"] = models.kept[name].scheduler_config
    return configs
