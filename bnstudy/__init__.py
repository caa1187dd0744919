"""bnstudy: the shift and scale parameters of BatchNorm, studied with Hydra sweeps."""

__version__ = "0.1.0"
