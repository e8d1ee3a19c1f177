# SDXL worker for RunPod: CUDA runtime, torch with CUDA, the requirements and the fp16 weights.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ARG BASE_MODEL=stabilityai/stable-diffusion-xl-base-1.0
ARG REFINER_MODEL=stabilityai/stable-diffusion-xl-refiner-1.0
ARG VAE_MODEL=madebyollin/sdxl-vae-fp16-fix
ENV BASE_MODEL=${BASE_MODEL} REFINER_MODEL=${REFINER_MODEL} VAE_MODEL=${VAE_MODEL} \
    HF_HOME=/models PYTHONUNBUFFERED=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY builder/ builder/
RUN python builder/download_weights.py

COPY handler.py test_input.json ./
COPY src/ src/
ENV HF_HUB_OFFLINE=1
CMD ["python", "-u", "handler.py"]
