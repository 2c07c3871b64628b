"""Training the small FlashVSR model with Lightning (``flashvsr-q train``).

    recipe.py       YAML recipe -> typed settings
    init.py         decoder initialisation as an upscaler of its LR input
    decoder_fit.py  full-batch L-BFGS fits of the decoder's picture path, then of the whole decoder
    output_fit.py   closed-form (ridge) refit of the decoder's last conv
    forward.py      the training forward (one streaming chunk with gradients, decoder parallel over time)
    system.py       the LightningModule (step, loss, optimiser)
    run.py          Trainer, checkpoints, resume, export in the official layout
    measure.py      held-out PSNR/SSIM against bicubic through the full inference path
    bounds.py       closed-form linear upsamplers: how far the decoder's layout and its designed start can go
"""
