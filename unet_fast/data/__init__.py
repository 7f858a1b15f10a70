"""Training data: the embedded synthetic EM data set, image folders / TIFF stacks, tile sampling."""
from unet_fast.data.synthetic import SyntheticEMDataset, make_synthetic_em, synthetic_em_sample

__all__ = ["SyntheticEMDataset", "make_synthetic_em", "synthetic_em_sample"]
