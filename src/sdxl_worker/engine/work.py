"""The work a job asks for, against the worker's budget, before anything runs.

Work is counted in units of one UNet call on one 1024x1024 image: the output's pixels (as a
fraction of 1024x1024) x images x model calls, both stages. Model calls are the denoising loop's
iterations as the schedulers will really run them (Heun and KDPM2 call the model twice per step,
PNDM runs one step more), doubled by classifier-free guidance, which runs every call on a batch
twice the size. Each ControlNet adds half a call to every base step: diffusers runs it beside
the UNet at every step (outside its start/end only its scale is zero), and an SDXL ControlNet is
the UNet's encoder half. A job whose ``model`` must be loaded first adds the switch's work
(sdxl_worker.engine.switch.SWITCH_WORK). A job over ``MAX_JOB_WORK`` units is refused by the check pass
(runtime/checks.py), with the sum shown.
"""

from __future__ import annotations

REFERENCE_PIXELS = 1024 * 1024
CONTROLNET_CALL = 0.5  # one SDXL ControlNet call, in UNet calls
# One depth map (engine/depth.py): Depth Anything V2 Small at its 518-pixel input is about 1/50 of
# an SDXL UNet call at 1024x1024 (25 M parameters on 37x37 patches); counted per map, at any size.
DEPTH_MAP = 0.02
# One pose map (engine/pose.py): an RT-DETR-R50 detection at 640 pixels and a ViTPose-B pass per
# person (at most 10) at 256x192, together under a tenth of an SDXL UNet call at 1024x1024.
POSE_MAP = 0.1
# One SDXL base UNet call at 1024x1024 (128x128 latents, batch 1), in floating-point operations as
# torch's FlopCounterMode counts them on the real config: the unit the upscaling model is measured in.
UNET_CALL_FLOPS = 6.76e12


def model_calls(steps: dict[str, int], guidance_scale: float, controlnets: int = 0) -> float:
    """UNet calls per image for the whole job, ControlNet calls counted at CONTROLNET_CALL each on
    the base's steps; guidance above 1 doubles each (diffusers' CFG rule)."""
    calls = sum(steps.values()) + steps.get("base", 0) * CONTROLNET_CALL * controlnets
    return calls * (2 if guidance_scale > 1 else 1)


def model_upscale(pixels: int, images: int, flops_per_pixel: float) -> float:
    """The upscaling model's work on ``images`` first-pass images of which it sees ``pixels`` each
    (its tiles with their margins, engine.upscaler.pixels_seen): its operations per input pixel,
    counted at start-up, in UNet calls. An ESRGAN x4 is about 5.6 units on a 1024x1024 image (6.3
    with its tiles' margins); a Real-ESRGAN x2, which works at half the size inside, a quarter of it."""
    return pixels * images * flops_per_pixel / UNET_CALL_FLOPS


def job_work(steps: dict[str, int], width: int, height: int, images: int, guidance_scale: float,
             controlnets: int = 0) -> float:
    return width * height / REFERENCE_PIXELS * images * model_calls(steps, guidance_scale, controlnets)
