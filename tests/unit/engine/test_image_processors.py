"""engine/image_processors.py: transformers' image processors kept on the PIL backend the tests run."""


def test_processors_of_transformers_torchvision_backend_are_put_on_pil():
    """The image installs torchvision; its IP-Adapter processor is moved to the PIL backend the tests run."""
    from transformers import CLIPImageProcessorPil

    from sdxl_worker.engine.image_processors import on_pil

    class CLIPImageProcessor:  # stands for transformers' torchvision class, which needs torchvision to exist
        def to_dict(self):
            return CLIPImageProcessorPil(size=224, crop_size=224).to_dict()

    moved = on_pil(CLIPImageProcessor())
    assert type(moved) is CLIPImageProcessorPil and moved.crop_size["height"] == 224 and moved.size["shortest_edge"] == 224
    assert on_pil(moved) is moved
