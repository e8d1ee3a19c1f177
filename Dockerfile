# syntax=docker/dockerfile:1
# SDXL worker for RunPod: CUDA base, Python, torch with CUDA, the requirements and the fp16 weights.
#
#   docker build -t you/sdxl-worker:1.0 .
#   docker build --build-arg BASE_MODEL=you/your-sdxl-finetune -t you/sdxl-worker:custom .
#
# Layers go from least to most often changed: Python and torch, the weights (11.5 GB, rebuilt
# only when a model id or the builder changes), the libraries, then the worker's code.

# uv installs Python and the packages; only its binary is copied out of this stage.
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

# CUDA's "base" flavour: driver hooks and the CUDA environment only. The CUDA libraries come
# with the torch wheel, so the "runtime" flavour would carry a second copy of them (~3 GB).
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models

# Python (uv's standalone build: no apt packages to pin) and torch built for CUDA 12.8, with the
# torchvision made for it (spandrel, the hires pass's model upscaler, imports it).
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN uv venv --python 3.12 /opt/venv \
    && uv pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_INDEX}" \
    && uv pip install huggingface_hub==2.4.0 hf_xet==1.8.0

# The weights, fetched at build time: exactly the files the worker loads (builder/).
# Model ids are build args with the same names as the run-time variables. A checkpoint from a
# model site: BASE_MODEL_URL, with BASE_MODEL the .safetensors path it goes to; a site's token
# comes as the build secret model_token, never stored in a layer (docs/checkpoints.md).
ARG BASE_MODEL=stabilityai/stable-diffusion-xl-base-1.0
ARG REFINER_MODEL=stabilityai/stable-diffusion-xl-refiner-1.0
ARG VAE_MODEL=madebyollin/sdxl-vae-fp16-fix
ARG TAESD_MODEL=madebyollin/taesdxl
ARG BASE_MODEL_URL=""
ARG BASE_MODEL_MAX_GB=16
ARG CHECKPOINT_CONFIG=stabilityai/stable-diffusion-xl-base-1.0
# Fast presets whose weights to bake (lightning-4,lcm-4,... or all); docs/checkpoints.md.
ARG PRESETS=""
# ControlNets (name=hub id,...) and an IP-Adapter with its image encoder; docs/control.md. E.g.
#   --build-arg CONTROLNET_MODELS=canny=diffusers/controlnet-canny-sdxl-1.0,depth=diffusers/controlnet-depth-sdxl-1.0
#   --build-arg IP_ADAPTER_MODEL=h94/IP-Adapter
ARG CONTROLNET_MODELS=""
ARG IP_ADAPTER_MODEL=""
ARG IP_ADAPTER_WEIGHT=sdxl_models/ip-adapter_sdxl.safetensors
ARG IP_ADAPTER_ENCODER=""
# The depth preprocessor (preprocess: depth), e.g. --build-arg DEPTH_MODEL=depth-anything/Depth-Anything-V2-Small-hf
ARG DEPTH_MODEL=""
# The pose preprocessor (preprocess: pose), both or neither, e.g.
#   --build-arg POSE_MODEL=usyd-community/vitpose-base-simple --build-arg POSE_DETECTOR=PekingU/rtdetr_r50vd_coco_o365
ARG POSE_MODEL=""
ARG POSE_DETECTOR=""
# The hires pass's model upscaler (hires.upscaler: model), e.g.
#   --build-arg UPSCALER_MODEL=ai-forever/Real-ESRGAN --build-arg UPSCALER_WEIGHT=RealESRGAN_x2.pth
ARG UPSCALER_MODEL=""
ARG UPSCALER_WEIGHT=RealESRGAN_x2.pth
WORKDIR /app
COPY builder/ builder/
# The builder reads the model ids as the worker does, through its configuration module
# (standard library only, so it runs before anything else is installed).
COPY src/sdxl_worker/__init__.py src/sdxl_worker/config.py src/sdxl_worker/errors.py src/sdxl_worker/
COPY src/sdxl_worker/request/__init__.py src/sdxl_worker/request/presets.py src/sdxl_worker/request/
RUN --mount=type=secret,id=model_token,required=false \
    PYTHONPATH=src python builder/download_checkpoint.py \
    && PYTHONPATH=src python builder/download_weights.py

# The libraries. OpenCV (pulled in by invisible-watermark) is swapped for its headless build,
# which needs no X11/OpenGL system libraries.
COPY requirements.txt requirements-upscaler.txt ./
RUN uv pip install -r requirements.txt \
    && uv pip install --no-deps -r requirements-upscaler.txt \
    && uv pip uninstall opencv-python \
    && uv pip install opencv-python-headless==5.0.0.93

# Run time is offline: everything the worker loads is in the image.
ENV BASE_MODEL=${BASE_MODEL} \
    CHECKPOINT_CONFIG=${CHECKPOINT_CONFIG} \
    REFINER_MODEL=${REFINER_MODEL} \
    VAE_MODEL=${VAE_MODEL} \
    TAESD_MODEL=${TAESD_MODEL} \
    CONTROLNET_MODELS=${CONTROLNET_MODELS} \
    IP_ADAPTER_MODEL=${IP_ADAPTER_MODEL} \
    IP_ADAPTER_WEIGHT=${IP_ADAPTER_WEIGHT} \
    IP_ADAPTER_ENCODER=${IP_ADAPTER_ENCODER} \
    DEPTH_MODEL=${DEPTH_MODEL} \
    POSE_MODEL=${POSE_MODEL} \
    POSE_DETECTOR=${POSE_DETECTOR} \
    UPSCALER_MODEL=${UPSCALER_MODEL} \
    UPSCALER_WEIGHT=${UPSCALER_WEIGHT} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

COPY handler.py test_input.json pyproject.toml README.md ./
COPY src/ src/
# The package, then the files the worker's start opens (libraries, Python modules), listed once:
# at each cold start a helper process reads them, then the weights, into memory while Python
# imports (src/sdxl_worker/runtime/prefetch.py).
RUN uv pip install --no-deps . \
    && python -m sdxl_worker.runtime.start_files
CMD ["python", "-u", "handler.py"]
