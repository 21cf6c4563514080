"""Segmentation networks, reached by the scripts only through ``--module package.module.Class``.

The network contract -- what a class needs for ``train.py`` and ``test.py`` to use it, whether
it lives here or in a researcher's own package on PYTHONPATH:

- It is a ``torch.nn.Module`` subclass.
- Its constructor takes ``num_classes`` (output channels, background included) and may take
  ``img_size`` (int, the training and inference size) and ``in_chans`` (int); the scripts pass
  these two only when the constructor names them. Other arguments need defaults; the scripts
  pass them from ``--model_kwargs`` as JSON.
- ``forward(x)`` maps a float batch (B, C, H, W) -- C = 1 for CT, slices normalised as
  (x - 0.5) / 0.5 -- to logits (B, num_classes, H, W): no softmax, same height and width.
- A size it cannot take is a ``ValueError`` that says which sizes work.
- Optional: a class attribute ``channels_last = True`` runs it in ``torch.channels_last`` on a
  CPU (``utils.loader.to_device``); only for a ``forward`` that never ``.view``s a convolution's
  output across its channel and spatial axes.

In-tree networks: ``networks.DAEFormer.DAEFormer`` (the published DAE-Former) and
``networks.UNet.UNet`` (a classic U-Net baseline).
"""
