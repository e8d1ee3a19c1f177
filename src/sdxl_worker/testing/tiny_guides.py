"""Tiny ControlNets and a tiny IP-Adapter for the tiny model, built in code, saved as the real ones are.

A ControlNet is ``ControlNetModel.from_unet`` of the tiny base UNet, its zero-initialised output
convolutions (which would make a fresh ControlNet change nothing) given random weights; saved
with ``save_pretrained``, loaded back with ``from_pretrained``. The IP-Adapter is a random image
projection and per-layer key/value projections in the key layout diffusers' ``load_ip_adapter``
reads (``image_proj.*``, ``ip_adapter.<n>.to_k_ip/to_v_ip``), with a small random CLIP vision
encoder in ``image_encoder`` beside it, as h94/IP-Adapter lays out ``sdxl_models``.
"""

from __future__ import annotations

from pathlib import Path

from sdxl_worker.config import DEFAULT_IP_ADAPTER_WEIGHT

IMAGE_EMBEDDING = 24  # the tiny image encoder's projection width


def write_tiny_controlnet(folder: Path, seed: int) -> Path:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from sdxl_worker.engine.tiny import ensure_tiny_model

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_model() / "base" / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    controlnet.save_pretrained(folder)
    return Path(folder)


def write_tiny_union_controlnet(folder: Path, seed: int, control_types: int = 8) -> Path:
    """A tiny union ControlNet (xinsir's controlnet-union-sdxl-1.0 architecture: one model, a control
    mode per image) from the tiny base UNet's config: its mode transformer as wide as the UNet's
    first block, ``control_types`` modes (8 as the promax variant, 6 as the first release), the
    zero-initialised outputs random. Saved with ``save_pretrained``, as the real one is laid out."""
    import torch
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    from sdxl_worker.engine.tiny import ensure_tiny_model

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_model() / "base" / "unet")
    shape = {key: value for key, value in ControlNetUnionModel.from_unet(
        unet, conditioning_embedding_out_channels=(8, 16, 16, 16), load_weights_from_unet=False).config.items()
        if key != "_use_default_values"}  # it would put back the defaults replaced below
    width = unet.config.block_out_channels[0]
    controlnet = ControlNetUnionModel.from_config({**shape, "num_trans_channel": width, "num_proj_channel": width,
                                                   "num_trans_head": 2, "num_control_type": control_types})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out",
                                "spatial_ch_projs")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    controlnet.save_pretrained(folder)
    return Path(folder)


def write_tiny_depth_model(folder: Path, seed: int = 7) -> Path:
    """A tiny Depth Anything V2 (a DINOv2 backbone and the DPT head, transformers'
    DepthAnythingForDepthEstimation) with random weights, and the image processor the real
    depth-anything/Depth-Anything-V2-Small-hf ships (518 pixels, aspect kept, multiples of 14,
    bicubic, ImageNet's mean and deviation), saved as that repository is laid out."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative")
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(folder)
    return Path(folder)


def write_tiny_pose_models(folder: Path, finds_people: bool = True, seed: int = 9) -> tuple[Path, Path]:
    """A tiny ViTPose (transformers' VitPoseForPoseEstimation: a ViT backbone and the simple heatmap
    head, COCO's 17 keypoints) and a tiny RT-DETR person detector (RTDetrForObjectDetection on a
    small ResNet, COCO's 80 labels), random weights, each with its image processor; returns
    (POSE_MODEL folder, POSE_DETECTOR folder). The detector's class biases are set so that, random
    as it is, every query it makes is a person (``finds_people``) or none is: what a test needs
    to know of a random detector."""
    import torch
    from transformers import (
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
        RTDetrResNetConfig,
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    torch.manual_seed(seed)
    pose_folder, detector_folder = Path(folder) / "pose", Path(folder) / "detector"
    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     image_size=[256, 192], patch_size=[16, 16], out_indices=[2])
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).save_pretrained(pose_folder)
    VitPoseImageProcessor().save_pretrained(pose_folder)  # 256x192 boxes, ImageNet's mean and deviation
    detector = RTDetrForObjectDetection(RTDetrConfig(
        backbone_config=RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                           layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
        encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128], d_model=32, num_queries=20, decoder_layers=1,
        encoder_layers=1, decoder_ffn_dim=64, encoder_ffn_dim=64, num_labels=80, decoder_attention_heads=2,
        encoder_attention_heads=2, num_feature_levels=3, decoder_in_channels=[32, 32, 32], num_denoising=0,
        id2label={0: "person", **{index: f"thing {index}" for index in range(1, 80)}}))
    sees_people(detector, finds_people)
    detector.save_pretrained(detector_folder)
    RTDetrImageProcessor().save_pretrained(detector_folder)  # 640x640, as the published detector
    return pose_folder, detector_folder


def sees_people(detector, people: bool = True) -> None:
    """Set an RT-DETR's class biases so that, random as its weights are, every query it makes is a
    person (COCO's label 0), or none is: the detections a test or a benchmark needs to know."""
    import torch

    with torch.no_grad():
        for name, parameter in detector.named_parameters():
            if name.endswith("bias") and ("class_embed" in name or "enc_score_head" in name):
                parameter.fill_(-12.0)
                parameter[0] = 12.0 if people else -12.0


PLUS_WEIGHT = "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors"  # h94/IP-Adapter's Plus, with...
PLUS_ENCODER = "models/image_encoder"  # ...the ViT-H encoder at the repository's top


def write_tiny_ip_adapter(folder: Path, seed: int = 3, encoder_width: int = IMAGE_EMBEDDING, plus: bool = False) -> Path:
    """The tiny IP-Adapter under ``folder``, laid out as h94/IP-Adapter is; returns ``folder``.

    Plain (default): IP_ADAPTER_WEIGHT's default file, an ``image_proj.proj`` linear projection of
    the encoder's image embedding, the encoder beside it in ``sdxl_models/image_encoder``.
    ``plus``: PLUS_WEIGHT, the Plus projection (a resampler: learned queries, four blocks of
    attention over the encoder's hidden states and a feed-forward, in the original repository's
    key names), the encoder in PLUS_ENCODER. ``encoder_width`` other than IMAGE_EMBEDDING: an
    image encoder the plain adapter was not made for."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sdxl_worker.engine.tiny import ensure_tiny_model

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_model() / "base" / "unet")
    width, channels = unet.config.cross_attention_dim, unet.config.block_out_channels
    generator = torch.Generator().manual_seed(seed)
    encoder_config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                      image_size=32, patch_size=8, projection_dim=encoder_width)

    def random(*shape):
        return torch.randn(shape, generator=generator) * 0.1

    if plus:
        state = _resampler(random, encoder_config.hidden_size, width)
    else:
        state = {"image_proj.proj.weight": random(4 * width, IMAGE_EMBEDDING), "image_proj.proj.bias": random(4 * width),
                 "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    number = 1  # diffusers numbers the cross-attention layers 1, 3, 5, ... in the UNet's order
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{number}.to_k_ip.weight"] = random(hidden, width)
        state[f"ip_adapter.{number}.to_v_ip.weight"] = random(hidden, width)
        number += 2
    weight = Path(folder) / (PLUS_WEIGHT if plus else DEFAULT_IP_ADAPTER_WEIGHT)
    weight.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weight))
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(encoder_config)
    encoder.save_pretrained(Path(folder) / PLUS_ENCODER if plus else weight.parent / "image_encoder")
    return Path(folder)


def _resampler(random, embedding: int, output: int, dim: int = 32, queries: int = 4, depth: int = 4,
               heads: int = 1, ff_mult: int = 4) -> dict:
    """The Plus projection's weights in the IP-Adapter repository's layout (diffusers converts it);
    its attention heads are 64 wide, as diffusers reads the head count from to_q's size."""
    import torch

    inner = heads * 64
    state = {"image_proj.latents": random(1, queries, dim),
             "image_proj.proj_in.weight": random(dim, embedding), "image_proj.proj_in.bias": random(dim),
             "image_proj.proj_out.weight": random(output, dim), "image_proj.proj_out.bias": random(output),
             "image_proj.norm_out.weight": torch.ones(output), "image_proj.norm_out.bias": torch.zeros(output)}
    for layer in range(depth):
        at = f"image_proj.layers.{layer}"
        for norm in ("norm1", "norm2"):
            state[f"{at}.0.{norm}.weight"], state[f"{at}.0.{norm}.bias"] = torch.ones(dim), torch.zeros(dim)
        state[f"{at}.0.to_q.weight"] = random(inner, dim)
        state[f"{at}.0.to_kv.weight"] = random(2 * inner, dim)
        state[f"{at}.0.to_out.weight"] = random(dim, inner)
        state[f"{at}.1.0.weight"], state[f"{at}.1.0.bias"] = torch.ones(dim), torch.zeros(dim)
        state[f"{at}.1.1.weight"] = random(dim * ff_mult, dim)
        state[f"{at}.1.3.weight"] = random(dim, dim * ff_mult)
    return state
