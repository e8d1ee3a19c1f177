"""What the stages after planning take beside the plan: the job's context and its fetched inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from sdxl_worker.runtime.stopping import Stop

ProgressCallback = Callable[[dict, dict], None]  # (job, {"step", "total_steps", "stage"})


def job_id_of(job: dict) -> str:
    """A job's id as logs and upload keys use it ("local" for a job without one), at most 100 characters."""
    return str(job.get("id", "local"))[:100]


@dataclass(frozen=True)
class JobContext:
    """One job's identity and controls: the job as the transport gave it (RunPod's progress
    updates name it), where progress goes (None: nowhere), and its ``Stop`` (cancel,
    JOB_TIMEOUT_S, SIGTERM)."""

    job: dict
    on_progress: ProgressCallback | None
    stop: Stop

    @property
    def id(self) -> str:
        """The job's id, for logs and upload keys."""
        return job_id_of(self.job)


@dataclass
class JobInputs:
    """What a job's inputs point at, fetched and decoded (the fetch stage of runtime/job.py)."""

    image: Image.Image | None = None  # img2img, inpaint, refine
    image_field: str = "image"  # the input that held it: 'image' or 'image_url'
    mask: Image.Image | None = None
    control_images: list = field(default_factory=list)  # one per ControlNet, at the output size
    ip_adapter_images: list = field(default_factory=list)
    loras: list = field(default_factory=list)  # engine.lora_layers.LoraFile, local files in order
