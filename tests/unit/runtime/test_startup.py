"""Start-up as users meet it: shared components, the tiny model's shape, one-sentence errors, local runs."""


from tests.helpers import run_handler


def test_the_refiner_shares_text_encoder_2_and_the_vae(models):
    assert models.refiner.text_encoder_2 is models.base.text_encoder_2
    assert models.refiner.vae is models.base.vae
    assert models.img2img.unet is models.base.unet
    assert models.refiner.text_encoder is None


def test_the_tiny_model_has_sdxls_shape(models):
    assert models.base.unet.config.addition_embed_type == "text_time"
    assert models.refiner.unet.config.cross_attention_dim == models.base.text_encoder_2.config.hidden_size
    assert models.refiner.config.requires_aesthetics_score
    assert 2 ** (len(models.base.vae.config.block_out_channels) - 1) == 8  # SDXL's 8x latent downsampling


def test_missing_weights_are_one_sentence_at_start_up(tmp_path):
    done = run_handler(BASE_MODEL=str(tmp_path / "no-such-model"), REFINER_MODEL="none", VAE_MODEL="base",
                       HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "BASE_MODEL" in errors[0] and "tiny" in errors[0]
    assert "Traceback" not in done.stderr


def test_a_missing_vae_names_vae_model(tmp_path):
    done = run_handler(BASE_MODEL="tiny", REFINER_MODEL="none", VAE_MODEL=str(tmp_path / "no-vae"), HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    assert "VAE_MODEL" in done.stderr and "VAE_MODEL=base" in done.stderr and "Traceback" not in done.stderr




def test_an_unexpected_error_while_loading_is_one_sentence_and_exit_1(monkeypatch, caplog):
    """On RunPod an uncaught exception at start-up restarts the worker forever; it must stop instead."""
    import logging

    import pytest

    from sdxl_worker.engine import models as loading
    from sdxl_worker.runtime import startup

    def broken(*args, **kwargs):
        raise ValueError("A dict of processors was passed, but the number of processors 140 does not match 144.")

    monkeypatch.setattr(loading, "load_models", broken)
    monkeypatch.setenv("PREFETCH", "0")
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as stopped:
        startup.start()
    assert stopped.value.code == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == ["The worker could not start: ValueError: A dict of processors was passed, but the number of "
                      "processors 140 does not match 144."]
