"""nplvm: latent variable models written from scratch in NumPy, every gradient by hand.

Layers (bottom up): ``kernels`` (hot numeric kernels) <- ``nplvm.backend`` <- ``nplvm.nn``,
``nplvm.distributions`` <- ``nplvm.objectives`` <- ``nplvm.models`` <- ``nplvm.train``,
``nplvm.plots`` <- ``lessons``.  Nothing lower imports anything higher.
"""
__version__ = "0.1.0"
