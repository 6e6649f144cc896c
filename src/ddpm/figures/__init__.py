"""Figures that explain a DDPM, one module per family: the forward process (``forward``), the reverse trajectory
(``trajectory``), the loss per timestep (``loss``), the network (``architecture``), the training curves
(``curves``) and a class-conditional model's classes and guidance (``classes``), with what they share in
``common``. ``ddpm visualize`` and ``ddpm plot`` are thin wrappers around them.

Every figure is a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state, no GUI backend)
and sized in whole quarter-inches, so that at an integer dpi its pixel size is exact and predictable.
"""
